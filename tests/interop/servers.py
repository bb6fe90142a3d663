"""Real mail servers for the interop tests, each run from a throw-away directory.

Every server gets its own configuration files, an RSA certificate from a trustme CA
(OpenSMTPD's privilege-separated signer handles only RSA keys), Maildirs for the
test mailboxes and a free loopback port.  ``start()`` waits for the 220 greeting
and ``stop()`` ends the whole process group, so nothing outlives the test session.

The binaries come from ``tests/interop/install.sh`` (run by ``.ci/run``): Postfix
and Dovecot from Debian, Exim and OpenSMTPD unpacked under ``SMTPPOOL_INTEROP_ROOT``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import trustme

from smtppool import SMTPConnection
from smtppool.protocol import Extensions

from ..servers import wait_until

ROOT = Path(os.environ.get("SMTPPOOL_INTEROP_ROOT", "/opt/smtppool-interop"))
DOMAIN = "example.test"
#: A sender Postfix and Exim refuse at MAIL FROM.
REFUSED_SENDER = f"refused@{DOMAIN}"
MAILBOXES = ("alice", "bob", "sender")
USER = "alice"
PASSWORD = "interop-s3cret"
NOBODY = 65534
#: The extensions smtppool uses (XCLIENT, XFORWARD, VRFY, ETRN, HELP... it does not).
KEYWORDS = ("PIPELINING", "CHUNKING", "8BITMIME", "SMTPUTF8", "DSN", "SIZE", "ENHANCEDSTATUSCODES",
            "PIPECONNECT")  # fmt: skip
INSTALL_HINT = "run tests/interop/install.sh as root (.ci/run does)"


class ServerUnavailable(RuntimeError):
    """The server is not installed here, or did not come up."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class TLSFiles:
    """One CA and a server certificate for 127.0.0.1/localhost, written as PEM files."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA(key_type=trustme.KeyType.RSA)
        issued = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
        self.ca = directory / "ca.pem"
        self.cert = directory / "cert.pem"
        self.key = directory / "key.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        issued.private_key_pem.write_to_path(str(self.key))
        self.key.chmod(0o600)

    def client_tls(self) -> dict[str, str]:
        return {"cafile": str(self.ca)}


class MailServer:
    """A server process with a config directory, a port, a log and Maildirs."""

    name: ClassVar[str]
    lmtp: ClassVar[bool] = False
    mail_owner: ClassVar[str | int] = NOBODY
    startup_timeout: ClassVar[float] = 30.0

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"smtppool-{self.name}-"))
        self.dir.chmod(0o755)  # delivery agents run as unprivileged users
        self.tls = TLSFiles(self.dir)
        self.mail = self.dir / "mail"
        self.mail.mkdir()
        shutil.chown(self.mail, self.mail_owner, self.mail_owner)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.offers_starttls = False
        self.output = self.dir / "output.log"

    # -- what each server defines ----------------------------------------------------

    def configure(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    #: The server's log file inside its directory; None: what the process printed.
    log_file: ClassVar[str | None] = None

    @property
    def log_path(self) -> Path:
        return self.output if self.log_file is None else self.dir / self.log_file

    def log(self) -> str:
        """Everything the server logged so far."""
        path = self.log_path
        return path.read_text(errors="replace") if path.exists() else ""

    # -- life cycle --------------------------------------------------------------------

    @staticmethod
    def require(*paths: Path | str) -> None:
        for path in paths:
            if not Path(path).exists():
                raise ServerUnavailable(f"{path} not found: {INSTALL_HINT}")

    def start(self) -> MailServer:
        self.configure()
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.dir,
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise ServerUnavailable(f"{self.name} exited at start-up:\n{self.log()[-2000:]}")
            if self.greets():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerUnavailable(f"{self.name} gave no greeting in {self.startup_timeout} s")
            time.sleep(0.1)

    def greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as probe:
                return probe.recv(512).startswith(b"220")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def remove(self) -> None:
        """Delete the server's directory (kept when SMTPPOOL_INTEROP_KEEP is set)."""
        if not os.environ.get("SMTPPOOL_INTEROP_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    @functools.cached_property
    def extensions(self) -> Extensions:
        """The EHLO (LHLO) reply, after STARTTLS when the server offers it."""
        probe = SMTPConnection(
            host="127.0.0.1", port=self.port, lmtp=self.lmtp, name="probe.test",
            opportunistic_tls=True, tls=self.tls.client_tls(),
        )  # fmt: skip
        probe.connect()
        try:
            self.offers_starttls = probe.secure
            return probe.extensions
        finally:
            probe.quit()

    @property
    def advertised(self) -> frozenset[str]:
        """The keywords smtppool uses, ``AUTH <method>`` for each method, and STARTTLS."""
        extensions = self.extensions
        keywords = {keyword for keyword in KEYWORDS if keyword in extensions}
        keywords |= {f"AUTH {method}" for method in extensions.auth_mechanisms}
        if self.offers_starttls:
            keywords.add("STARTTLS")
        return frozenset(keywords)

    @property
    def size_limit(self) -> int:
        assert self.extensions.size is not None, f"{self.name} sets no SIZE limit"
        return self.extensions.size

    # -- what the server stored ------------------------------------------------------

    #: Whether RCPT TO an address outside MAILBOXES is refused (smtp-sink takes anything).
    refuses_unknown: ClassVar[bool] = True

    def folder(self, address: str) -> Path:
        """The Maildir that mail for ``address`` lands in."""
        return self.mail / address.partition("@")[0]

    def stored(self, address: str) -> list[bytes]:
        """The messages in the Maildir of ``address`` (its ``new/`` folder), oldest first."""
        new = self.folder(address) / "new"
        if not new.is_dir():
            return []
        files = sorted(new.iterdir(), key=lambda path: (path.stat().st_mtime, path.name))
        return [path.read_bytes() for path in files]

    def wait_for(
        self, address: str, done: Callable[[list[bytes]], bool], what: str, timeout: float = 30.0
    ) -> list[bytes]:
        """Everything stored for ``address`` once ``done(stored)`` holds.

        Reads again after a further moment, so that a late duplicate is seen too.
        """
        waited = wait_until(lambda: done(self.stored(address)), timeout, interval=0.2)
        assert waited, (
            f"timed out after {timeout} s waiting for {what} for {address} at {self.name}"
        )
        time.sleep(0.3)
        return self.stored(address)

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first match of ``pattern`` in the server's log, waiting for it to be written."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.log())
            if match:
                found.append(match)
            return bool(match)

        assert wait_until(seen, timeout), f"no {pattern!r} in {self.name}'s log after {timeout} s"
        return found[0]


def _lines(*lines: str) -> str:
    return "\n".join(lines) + "\n"


class Dovecot(MailServer):
    """Dovecot: LMTP into Maildirs, and the SASL service Postfix authenticates against."""

    name = "dovecot"
    log_file = "dovecot.log"
    lmtp = True
    mail_owner = "dovecot"
    #: A mailbox with a 1 KB quota: LMTP refuses it after the data, per recipient.
    FULL = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.auth_port = free_port()

    def configure(self) -> None:
        self.require("/usr/sbin/dovecot", "/usr/lib/dovecot/lmtp")
        for sub in ("run", "state"):
            (self.dir / sub).mkdir()
        log = self.log_path
        users = [f"{box}:::::::" for box in MAILBOXES]
        users.append(f"{self.FULL}:::::::userdb_quota_rule=*:storage=1K")
        (self.dir / "users").write_text(_lines(*users))
        (self.dir / "dovecot.conf").write_text(
            _lines(
                f"base_dir = {self.dir}/run",
                f"state_dir = {self.dir}/state",
                f"log_path = {log}",
                f"info_log_path = {log}",
                f"debug_log_path = {log}",
                "protocols = lmtp",
                "listen = 127.0.0.1",
                "ssl = yes",
                f"ssl_cert = <{self.tls.cert}",
                f"ssl_key = <{self.tls.key}",
                "default_internal_user = dovecot",
                "default_login_user = dovenull",
                "first_valid_uid = 1",  # deliveries run as the dovecot system user
                f"mail_location = maildir:{self.mail}/%n",
                "auth_mechanisms = plain login",
                "auth_verbose = yes",
                "lmtp_save_to_detail_mailbox = no",
                "mail_plugins = $mail_plugins mail_log notify quota",
                "plugin {",
                "  mail_log_events = save",
                "  mail_log_fields = uid box msgid size",
                "  quota = maildir:User quota",
                "}",
                "passdb {",
                "  driver = static",
                f"  args = password={PASSWORD}",
                "}",
                "userdb {",
                "  driver = passwd-file",
                f"  args = username_format=%n {self.dir}/users",
                f"  default_fields = uid=dovecot gid=dovecot home={self.mail}/%n",
                "}",
                "service lmtp {",
                "  inet_listener lmtp {",
                "    address = 127.0.0.1",
                f"    port = {self.port}",
                "  }",
                "}",
                "service auth {",
                "  inet_listener {",
                "    address = 127.0.0.1",
                f"    port = {self.auth_port}",
                "  }",
                "}",
            )
        )

    def command(self) -> list[str]:
        return ["/usr/sbin/dovecot", "-F", "-c", str(self.dir / "dovecot.conf")]


class Postfix(MailServer):
    """Postfix smtpd with every extension on, delivering through virtual(8) to Maildirs.

    AUTH goes through the Dovecot SASL service given at construction.
    """

    name = "postfix"
    log_file = "maillog"

    def __init__(self, sasl: Dovecot) -> None:
        super().__init__()
        self.sasl = sasl

    def configure(self) -> None:
        self.require("/usr/sbin/postfix", "/usr/lib/postfix/sbin/smtpd", "/etc/postfix/master.cf")
        for sub in ("queue", "data"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix")
        mailboxes = ", ".join(f"{box}@{DOMAIN}={box}/" for box in MAILBOXES)
        (self.dir / "main.cf").write_text(
            _lines(
                "compatibility_level = 3.6",
                f"queue_directory = {self.dir}/queue",
                f"data_directory = {self.dir}/data",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                "myhostname = postfix.interop.test",
                "mydomain = interop.test",
                "myorigin = interop.test",
                "mydestination =",
                "inet_interfaces = 127.0.0.1",
                "inet_protocols = ipv4",
                "mynetworks = 127.0.0.0/8",
                f"maillog_file = {self.log_path}",
                f"maillog_file_prefixes = {self.dir}",
                "alias_maps =",
                "alias_database =",
                "smtputf8_enable = yes",
                "message_size_limit = 20000000",
                f"virtual_mailbox_domains = {DOMAIN}",
                f"virtual_mailbox_base = {self.mail}",
                f"virtual_mailbox_maps = inline:{{ {mailboxes} }}",
                f"virtual_uid_maps = static:{NOBODY}",
                f"virtual_gid_maps = static:{NOBODY}",
                f"smtpd_tls_cert_file = {self.tls.cert}",
                f"smtpd_tls_key_file = {self.tls.key}",
                "smtpd_tls_security_level = may",
                "smtpd_tls_loglevel = 1",
                "smtpd_tls_auth_only = yes",
                "smtpd_sasl_auth_enable = yes",
                "smtpd_sasl_type = dovecot",
                f"smtpd_sasl_path = inet:127.0.0.1:{self.sasl.auth_port}",
                "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated"
                " reject_unauth_destination",
                # Refuse clients that pipeline before PIPELINING is offered (RFC 2920).
                "smtpd_data_restrictions = reject_unauth_pipelining",
                "smtpd_error_sleep_time = 0",  # no tarpit for the wrong-password test
                # Refuse one sender at MAIL FROM (not delayed to RCPT).
                "smtpd_delay_reject = no",
                "smtpd_sender_restrictions = check_sender_access"
                f" inline:{{ {{ {REFUSED_SENDER} = 553 5.7.1 sender refused here }} }}",
            )
        )
        # Debian's master.cf, with no chroot and smtpd on our port only.
        services = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if fields[:2] == ["smtp", "inet"]:
                line = f"127.0.0.1:{self.port} inet n - n - - smtpd"
            elif len(fields) >= 8 and not line[0].isspace() and fields[4] == "y":
                fields[4] = "n"
                line = " ".join(fields)
            services.append(line)
        (self.dir / "master.cf").write_text("\n".join(services) + "\n")

    def command(self) -> list[str]:
        return ["/usr/sbin/postfix", "-c", str(self.dir), "start-fg"]

    def stop(self) -> None:
        if self.process is not None:
            subprocess.run(
                ["/usr/sbin/postfix", "-c", str(self.dir), "stop"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        super().stop()


class SmtpSink(MailServer):
    """Postfix's ``smtp-sink`` test server, dumping each transaction to a file.

    Started with ``-a``: its AUTH is a stub that answers 250 instead of 235
    (RFC 4954), which smtppool, like smtplib, treats as a failed login.
    """

    name = "smtp-sink"
    refuses_unknown = False

    def folder(self, address: str) -> Path:
        return self.mail / "dump"

    def configure(self) -> None:
        self.require("/usr/sbin/smtp-sink")
        dumps = self.folder("") / "new"
        dumps.mkdir(parents=True)
        for folder in (dumps.parent, dumps):
            shutil.chown(folder, NOBODY, NOBODY)

    def command(self) -> list[str]:
        template = f"{self.folder('')}/new/%H%M%S."
        return ["/usr/sbin/smtp-sink", "-4", "-a", "-u", "nobody", "-d", template,
                f"127.0.0.1:{self.port}", "64"]  # fmt: skip


class Exim(MailServer):
    """Exim 4 (Debian's light daemon), STARTTLS, AUTH PLAIN/LOGIN after TLS, Maildirs."""

    name = "exim"
    log_file = "log/mainlog"
    mail_owner = "Debian-exim"

    @property
    def binary(self) -> Path:
        return ROOT / "usr/sbin/exim4"

    def configure(self) -> None:
        self.require(self.binary)
        for sub in ("spool", "log"):
            (self.dir / sub).mkdir()
            shutil.chown(self.dir / sub, "Debian-exim", "Debian-exim")
        shutil.chown(self.tls.key, "Debian-exim")  # read when a TLS session starts
        boxes = " : ".join(MAILBOXES)
        (self.dir / "exim.conf").write_text(
            _lines(
                "primary_hostname = exim.interop.test",
                f"exim_path = {self.binary}",  # it re-executes itself to deliver
                f"daemon_smtp_ports = {self.port}",
                "local_interfaces = 127.0.0.1",
                "keep_environment =",
                f"spool_directory = {self.dir}/spool",
                f"log_file_path = {self.dir}/log/%slog",
                "log_selector = +pipelining +tls_cipher +received_recipients"
                " +smtp_connection +smtp_protocol_error +millisec",
                f"tls_certificate = {self.tls.cert}",
                f"tls_privatekey = {self.tls.key}",
                "tls_advertise_hosts = *",
                "chunking_advertise_hosts = *",
                "dsn_advertise_hosts = *",
                "smtputf8_advertise_hosts = *",
                "pipelining_advertise_hosts = *",
                "message_size_limit = 20M",
                "accept_8bitmime = true",
                "smtp_accept_queue_per_connection = 0",  # deliver at once: no queue runner
                f"domainlist local_domains = {DOMAIN}",
                "acl_smtp_rcpt = acl_check_rcpt",
                "acl_smtp_mail = acl_check_mail",
                "",
                "begin acl",
                "acl_check_mail:",
                f"  deny   senders = {REFUSED_SENDER}",
                "         message = 5.7.1 sender refused here",
                "  accept",
                "",
                "acl_check_rcpt:",
                "  accept domains = +local_domains",
                f"         local_parts = {boxes}",
                "  deny   message = 5.1.1 no such user here",
                "",
                "begin routers",
                "maildir:",
                "  driver = accept",
                "  domains = +local_domains",
                f"  local_parts = {boxes}",  # sets the untainted $local_part_data
                "  transport = maildir_delivery",
                "",
                "begin transports",
                "maildir_delivery:",
                "  driver = appendfile",
                f"  directory = {self.mail}/${{local_part_data}}",
                "  maildir_format",
                "  create_directory",
                "  return_path_add",
                "  envelope_to_add",
                "  user = Debian-exim",
                "  mode = 0644",
                "",
                "begin authenticators",
                "plain:",
                "  driver = plaintext",
                "  public_name = PLAIN",
                "  server_prompts = :",
                f"  server_condition = ${{if and {{{{eq{{$auth2}}{{{USER}}}}}"
                f"{{eq{{$auth3}}{{{PASSWORD}}}}}}}}}",
                "  server_set_id = $auth2",
                "  server_advertise_condition = ${if def:tls_in_cipher}",
                "login:",
                "  driver = plaintext",
                "  public_name = LOGIN",
                "  server_prompts = Username:: : Password::",
                f"  server_condition = ${{if and {{{{eq{{$auth1}}{{{USER}}}}}"
                f"{{eq{{$auth2}}{{{PASSWORD}}}}}}}}}",
                "  server_set_id = $auth1",
                "  server_advertise_condition = ${if def:tls_in_cipher}",
            )
        )

    def command(self) -> list[str]:
        config = str(self.dir / "exim.conf")
        return [str(self.binary), "-C", config, "-bdf", "-oP", str(self.dir / "exim.pid")]


class OpenSMTPD(MailServer):
    """OpenSMTPD 7 (bookworm-backports): STARTTLS, AUTH after TLS, Maildirs via a table."""

    name = "opensmtpd"

    @property
    def binary(self) -> Path:
        return ROOT / "usr/sbin/smtpd"

    def configure(self) -> None:
        self.require(self.binary, "/usr/libexec/opensmtpd/mail.maildir")
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", PASSWORD], capture_output=True, text=True, check=True
        ).stdout.strip()
        (self.dir / "creds").write_text(f"{USER} {hashed}\n")
        mailboxes = ", ".join(f'"{box}@{DOMAIN}" = "nobody"' for box in MAILBOXES)
        (self.dir / "smtpd.conf").write_text(
            _lines(
                f'pki interop cert "{self.tls.cert}"',
                f'pki interop key "{self.tls.key}"',
                f"table creds file:{self.dir}/creds",
                f"table mailboxes {{ {mailboxes} }}",
                f"listen on 127.0.0.1 port {self.port} tls pki interop auth-optional <creds>"
                " hostname opensmtpd.interop.test",
                f'action "maildir" maildir "{self.mail}/%{{rcpt.user}}" virtual <mailboxes>',
                f'match from any for domain "{DOMAIN}" action "maildir"',
            )
        )

    def command(self) -> list[str]:
        return [str(self.binary), "-d", "-v", "-f", str(self.dir / "smtpd.conf")]


def message_in(stored: bytes, sent: bytes) -> bool:
    """Whether a stored message holds ``sent`` byte for byte, line endings aside.

    Maildirs keep LF line endings, and servers prepend their trace headers.
    """
    return sent.replace(b"\r\n", b"\n") in stored
