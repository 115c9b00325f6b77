#!/usr/bin/env bash
# Prepare a Debian 12 machine to run and test rasd from this checkout.
#
#   - Debian packages: bcc's Python module exists only as python3-bpfcc, built for
#     /usr/bin/python3, so the runtime dependencies come from Debian throughout.
#   - Kernel headers for bcc: the running kernel's own header package when Debian has
#     one; otherwise (custom kernels, as on the x86 development machines) the newest
#     linux-headers-cloud-amd64/-arm64 linked as /lib/modules/$(uname -r)/build.
#   - tracefs mounted at /sys/kernel/tracing (rasd never uses debugfs).
#   - .venv/ built from /usr/bin/python3 with --system-site-packages; rasd installed
#     editable into it, so .venv/bin/rasd and .venv/bin/rasdctl run this checkout.
#
# Idempotent and quiet when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME_PKGS=(python3 python3-venv python3-pip python3-setuptools python3-bpfcc
              python3-prometheus-client python3-pyroute2 python3-systemd)
TEST_PKGS=(python3-pytest python3-hypothesis systemd prometheus iproute2)

want=("${RUNTIME_PKGS[@]}")
[[ "${1:-}" == "--test" ]] && want+=("${TEST_PKGS[@]}")

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

kernel=$(uname -r)
arch=$(dpkg --print-architecture)
if [[ ! -e /lib/modules/$kernel/build/Makefile ]]; then
    if apt-cache show "linux-headers-$kernel" >/dev/null 2>&1; then
        missing+=("linux-headers-$kernel")
    else
        case "$arch" in
            amd64) missing+=(linux-headers-cloud-amd64) ;;
            *)     missing+=("linux-headers-$arch") ;;
        esac
    fi
fi

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    # the header meta-package for a foreign kernel needs another lookup after update
    if [[ ! -e /lib/modules/$kernel/build/Makefile ]] && ! apt-cache show "linux-headers-$kernel" >/dev/null 2>&1; then
        case "$arch" in amd64) apt-get install -y -q --no-install-recommends linux-headers-cloud-amd64 >&2 ;; esac
    fi
fi

# Workaround for kernels without a Debian header package: link the newest installed
# Debian headers for this architecture (bcc only needs a consistent kernel tree).
if [[ ! -e /lib/modules/$kernel/build/Makefile ]]; then
    hdr=$(ls -d /usr/src/linux-headers-*-{cloud-,}"$arch" 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -n "$hdr" ]]; then
        common=${hdr%-cloud-$arch}; common=${common%-$arch}-common
        mkdir -p "/lib/modules/$kernel"
        ln -sfn "$hdr" "/lib/modules/$kernel/build"
        [[ -d "$common" ]] && ln -sfn "$common" "/lib/modules/$kernel/source"
        echo "setup: linked $hdr as /lib/modules/$kernel/build (no Debian headers for $kernel)" >&2
    else
        echo "setup: warning: no kernel headers found; bcc cannot compile" >&2
    fi
fi

if [[ -d /sys/kernel/tracing ]] && [[ ! -e /sys/kernel/tracing/events ]]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: warning: cannot mount tracefs" >&2
fi

if [[ ! -x .venv/bin/python ]]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c 'import rasd, sys; sys.exit(0 if rasd.__file__.startswith("'"$PWD"'") else 1)' 2>/dev/null \
   || [[ ! -x .venv/bin/rasdctl ]]; then
    .venv/bin/pip install -q --no-deps --no-build-isolation -e . >&2
fi
