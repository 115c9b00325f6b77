#!/usr/bin/env python3
"""Man pages for rasd(8) and rasdctl(1), generated from their argparse parsers.

    gen-man.py OUTDIR VERSION        writes OUTDIR/rasd.8 and OUTDIR/rasdctl.1

The --help text is the documentation (it carries examples, signals and exit
status in its epilog), so the pages show it verbatim in no-fill blocks instead of
re-flowing it (help2man joins the epilog's example lines into one paragraph).
Run with the package to document on sys.path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["COLUMNS"] = "80"  # argparse wraps to this

from rasd import config  # noqa: E402
from rasd.cli import daemon, rasdctl  # noqa: E402


def esc(text: str) -> str:
    """Text for a roff no-fill block: backslashes and leading control characters."""
    out = []
    for line in text.rstrip("\n").split("\n"):
        line = line.replace("\\", "\\e")
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line)
    return "\n".join(out) + "\n"


def verbatim(text: str) -> str:
    return ".nf\n" + esc(text) + ".fi\n"


def body(p: argparse.ArgumentParser) -> str:
    """The help minus its usage line(s) and description (shown in their own sections)."""
    text = p.format_help()
    usage = p.format_usage()
    text = text[len(usage):] if text.startswith(usage) else text
    if p.description:
        text = text.replace(p.description.strip(), "", 1)
    return text.strip("\n") + "\n"


def page(name: str, section: int, version: str, summary: str, p: argparse.ArgumentParser,
         extra: str) -> str:
    date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH",
                                                                   time.time()))))
    usage = p.format_usage().removeprefix("usage: ")
    return (f'.TH {name.upper()} {section} "{date}" "rasd {version}" '
            f'"{"System Administration" if section == 8 else "User Commands"}"\n'
            f".SH NAME\n{name} \\- {summary}\n"
            f".SH SYNOPSIS\n{verbatim(usage)}"
            f".SH DESCRIPTION\n{esc((p.description or '').strip())}"
            f".SH OPTIONS\n{verbatim(body(p))}"
            + extra)


def main() -> int:
    out, version = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)

    files = (".SH FILES\n"
             f".TP\n.I {config.DEFAULT_PATH}\nconfiguration; every key is optional and "
             "documented in the shipped file with its default\n"
             ".TP\n.I /var/lib/rasd\nstate: SQLite store, BERT digests, kmsg cursor\n"
             ".TP\n.I /run/rasd/status.sock\nstatus socket (\\fBrasdctl status\\fR)\n"
             ".TP\n.I /usr/share/rasd/bpf\neBPF programs, compiled by bcc at start against "
             "the running kernel's headers (/lib/modules/$(uname -r)/build)\n"
             ".TP\n.I /usr/share/rasd/systemd/page-offline.conf\nunit drop-in granting "
             "CAP_SYS_ADMIN, needed for actions.page_offline = \"on\"\n"
             ".TP\n.I /usr/share/rasd/systemd/kernel-log.conf\nunit drop-in letting rasd "
             "read /dev/kmsg (CAP_SYSLOG), needed under lockdown=confidentiality only\n")
    rasd_extra = (files + ".SH SYSTEMD\nrasd.service runs \\fBrasd\\fR as Type=notify "
                  "with a watchdog, restarts it on failure except after exit status 78 "
                  "(bad configuration), and confines it to CAP_BPF and CAP_PERFMON; see "
                  "the comments in the unit file.\n"
                  ".SH SEE ALSO\n.BR rasdctl (1),\n.BR systemd.exec (5),\n"
                  ".BR journalctl (1)\n")
    (out / "rasd.8").write_text(page(
        "rasd", 8, version,
        "RAS daemon for arm64 servers (GHES/CPER, hwpoison, SError/SEA via eBPF)",
        daemon.build_parser(), rasd_extra))

    p = rasdctl.build_parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    cmds = [".SH COMMANDS\n"]
    for name, sp in subs.choices.items():
        cmds.append(f".SS {name}\n")
        if sp.description:
            cmds.append(esc(sp.description.strip()))
        cmds.append(verbatim(sp.format_help().replace(sp.description or "\0", "", 1)))
    (out / "rasdctl.1").write_text(page(
        "rasdctl", 1, version,
        "decode and inspect RAS error data (CPER, BERT, ESR) and query rasd",
        p, "".join(cmds) + ".SH SEE ALSO\n.BR rasd (8)\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
