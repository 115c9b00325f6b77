#!/usr/bin/env bash
# Build rasd_<version>_all.deb from this checkout.
#
#   packaging/build-deb.sh [OUTDIR]        (default OUTDIR: dist/); prints the .deb path
#
# rasd is pure Python whose runtime comes from Debian (python3-bpfcc has no PyPI
# twin), so the package is a staged tree + dpkg-deb rather than dh/pybuild: no
# build-time Python tooling, nothing downloaded, the same result as root in CI or
# as a user (dpkg-deb --root-owner-group). Maintainer scripts and metadata live in
# packaging/debian/ (control, conffiles, postinst, prerm, postrm, copyright);
# the postinst/prerm/postrm carry debhelper's dh_installsystemd/dh_python3
# snippets. Build dependencies: dpkg (dpkg-deb), /usr/bin/python3, gzip, git
# (timestamps) -- all on any Debian 12; man pages come from the argparse parsers
# (packaging/debian/gen-man.py), so no help2man.
#
# Installed layout:
#   /usr/lib/python3/dist-packages/rasd/         the package (byte-compiled by postinst)
#   /usr/bin/rasd, /usr/bin/rasdctl              entry points
#   /lib/systemd/system/rasd.service             enabled on install (deb-systemd-helper)
#   /etc/rasd/rasd.toml                          conffile, generated from rasd/config.py
#   /usr/share/rasd/bpf/                         eBPF C sources compiled by bcc at start
#   /usr/share/rasd/systemd/page-offline.conf    opt-in drop-in (CAP_SYS_ADMIN)
#   /usr/share/rasd/systemd/kernel-log.conf      opt-in drop-in (/dev/kmsg, lockdown=confidentiality)
#   /usr/share/rasd/systemd/perf-paranoid.conf   drop-in for perf_event_paranoid > 2 (postinst links it)
#   /usr/lib/systemd/catalog/rasd.catalog        journal message catalog
#   /usr/share/rasd/prometheus/rasd-alerts.yml   alert rules
#   /usr/share/rasd/grafana/rasd.json            dashboard
#   /usr/share/man/man8/rasd.8.gz, man1/rasdctl.1.gz, /usr/share/doc/rasd/
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
SRC=$PWD
OUTDIR=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
PY=/usr/bin/python3   # the interpreter the package runs on

VERSION=$("$PY" -c 'import ast,sys
for n in ast.parse(open("rasd/__init__.py").read()).body:
    if isinstance(n, ast.Assign) and n.targets[0].id == "__version__": print(n.value.value)')
DEBVERSION=${VERSION}${RASD_DEB_REVISION:+-$RASD_DEB_REVISION}
# reproducible: every timestamp is the last commit's (or now, outside git)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ST=$WORK/rasd
PKGDIR=$ST/usr/lib/python3/dist-packages

# --- the Python package: every file under rasd/ except bytecode (package data too)
mkdir -p "$PKGDIR"
(cd "$SRC" && find rasd -name __pycache__ -prune -o -type f ! -name '*.py[co]' -print0) \
    | (cd "$SRC" && xargs -0 -I{} install -D -m 644 {} "$PKGDIR/{}")
DI=$PKGDIR/rasd-$VERSION.dist-info
mkdir -p "$DI"
printf 'Metadata-Version: 2.1\nName: rasd\nVersion: %s\nSummary: %s\nLicense: GPL-2.0-only\nRequires-Python: >=3.11\n' \
    "$VERSION" "RAS daemon for arm64 servers" > "$DI/METADATA"
printf '[console_scripts]\nrasd = rasd.cli.daemon:main\nrasdctl = rasd.cli.rasdctl:main\n' > "$DI/entry_points.txt"
printf 'rasd\n' > "$DI/top_level.txt"
printf 'debian\n' > "$DI/INSTALLER"

# --- entry points (what setup.cfg's console_scripts say, for /usr/bin/python3)
mkdir -p "$ST/usr/bin"
for pair in rasd:rasd.cli.daemon rasdctl:rasd.cli.rasdctl; do
    name=${pair%%:*} mod=${pair#*:}
    cat > "$ST/usr/bin/$name" <<EOF
#!/usr/bin/python3
import sys
from $mod import main
sys.exit(main())
EOF
    chmod 755 "$ST/usr/bin/$name"
done

# --- systemd unit, drop-in example, config, bpf sources
install -D -m 644 packaging/rasd.service "$ST/lib/systemd/system/rasd.service"
install -D -m 644 packaging/debian/page-offline.conf "$ST/usr/share/rasd/systemd/page-offline.conf"
install -D -m 644 packaging/debian/kernel-log.conf "$ST/usr/share/rasd/systemd/kernel-log.conf"
install -D -m 644 packaging/debian/perf-paranoid.conf "$ST/usr/share/rasd/systemd/perf-paranoid.conf"
mkdir -p "$ST/etc/rasd"
"$PY" scripts/gen-config.py --stdout > "$ST/etc/rasd/rasd.toml"   # always SCHEMA's
chmod 644 "$ST/etc/rasd/rasd.toml"
mkdir -p "$ST/usr/share/rasd/bpf"
install -m 644 bpf/*.c bpf/*.h "$ST/usr/share/rasd/bpf/"

# --- files other parts of issue 5 provide: shipped when present
optional() {  # SRC DEST
    if [[ -f $1 ]]; then install -D -m 644 "$1" "$ST$2"
    else echo "build-deb: note: $1 not in the tree yet, not packaged" >&2; fi
}
optional etc/catalog/rasd.catalog /usr/lib/systemd/catalog/rasd.catalog
optional etc/prometheus/rasd-alerts.yml /usr/share/rasd/prometheus/rasd-alerts.yml
optional etc/grafana/rasd.json /usr/share/rasd/grafana/rasd.json

# --- documentation: README, field references, man pages from --help
DOC=$ST/usr/share/doc/rasd
install -D -m 644 README.md "$DOC/README.md"
for f in docs/*.md; do [[ -f $f ]] && install -m 644 "$f" "$DOC/"; done
install -m 644 packaging/debian/copyright "$DOC/copyright"
printf 'rasd (%s) unstable; urgency=medium\n\n  * Built from the rasd repository (%s).\n\n -- rasd developers <rasd@localhost>  %s\n' \
    "$DEBVERSION" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n > "$DOC/changelog.gz"

mkdir -p "$ST/usr/share/man/man8" "$ST/usr/share/man/man1"
PYTHONPATH=$PKGDIR "$PY" packaging/debian/gen-man.py "$WORK/man" "$VERSION"
gzip -9n < "$WORK/man/rasd.8" > "$ST/usr/share/man/man8/rasd.8.gz"
gzip -9n < "$WORK/man/rasdctl.1" > "$ST/usr/share/man/man1/rasdctl.1.gz"

# --- DEBIAN/
mkdir -p "$ST/DEBIAN"
install -m 755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$ST/DEBIAN/"
install -m 644 packaging/debian/conffiles "$ST/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$ST" | cut -f1)
sed -e "s/@VERSION@/$DEBVERSION/" -e "s/@INSTALLED_SIZE@/$size/" packaging/debian/control \
    > "$ST/DEBIAN/control"
(cd "$ST" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' \
    | LC_ALL=C sort -z | xargs -0 md5sum) > "$ST/DEBIAN/md5sums"
chmod 644 "$ST/DEBIAN/control" "$ST/DEBIAN/md5sums"

find "$ST" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
DEB=$OUTDIR/rasd_${DEBVERSION}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$ST" "$DEB" >&2
echo "$DEB"
