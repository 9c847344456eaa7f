#!/bin/bash
# install-deps.sh: install the host packages the CAN guest harness needs (Debian 12, root).
#
#   qemu-system-x86   from bookworm-backports (10.0), so it matches the qemu-utils 10.0 that
#                     some images ship; bookworm's 7.2 would remove that qemu-utils. When the
#                     backports suite cannot be reached, bookworm's own version is used.
#   busybox-static    /bin/busybox for the guest's initramfs
#   can-utils         cangen/candump/isotpsend..., run inside the guest from the host's /usr/bin
#   mmdebstrap        the Debian 12 root file system of the booted-Debian test (tests/vm/debian)
#
# On Debian 12, qemu-system-x86/bookworm-backports only resolves when qemu-system-common,
# qemu-system-data and seabios are named from bookworm-backports in the same command
# (otherwise apt reports "held broken packages").
#
# The mirror is taken from the machine's own apt sources; no host name is written here.
# Exits non-zero with a loud message when a package cannot be installed; CI then fails.
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive

loud() {
    echo "############################################################" >&2
    echo "### tests/vm/install-deps.sh: $*" >&2
    echo "############################################################" >&2
}

if [ "$(id -u)" != 0 ]; then
    loud "must run as root (apt-get install); the CAN guest tests cannot run"
    exit 1
fi

have_qemu() { command -v qemu-system-x86_64 >/dev/null && [ -f /usr/share/qemu/qboot.rom ]; }
need=()
have_qemu || need+=(qemu)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cangen >/dev/null && command -v candump >/dev/null || need+=(can-utils)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -eq 0 ]; then
    echo "install-deps: qemu-system-x86, busybox-static, can-utils and mmdebstrap already present"
    exit 0
fi

if [ ! -d /var/lib/apt/lists ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ]; then
    apt-get update -qq || { loud "apt-get update failed"; exit 1; }
fi

plain=()
for p in "${need[@]}"; do [ "$p" = qemu ] || plain+=("$p"); done
if [ ${#plain[@]} -gt 0 ]; then
    if ! apt-get install -y -qq --no-install-recommends "${plain[@]}"; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${plain[@]}" || {
            loud "cannot install ${plain[*]}; the CAN guest tests cannot run"; exit 1; }
    fi
fi

if ! have_qemu; then
    # Find the mirror of the main Debian archive in the existing sources (deb822 or one-line).
    uri=
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '/^URIs:/{u=$2} /^Suites:/{for (i = 2; i <= NF; i++) if ($i == "bookworm" && u != "") {print u; exit}}' "$f")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
    fi
    installed=
    if [ -n "$uri" ]; then
        T=$(mktemp -d)
        trap 'rm -rf "$T"' EXIT
        mkdir -p "$T/lists/partial"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$uri" > "$T/bpo.sources"
        O=(-o "Dir::Etc::sourceparts=$T" -o Dir::Etc::sourcelist=/dev/null
           -o "Dir::State::lists=$T/lists" -o APT::Sandbox::User=root)
        # Not -t bookworm-backports: that would also upgrade unrelated installed packages.
        if apt-get "${O[@]}" update -qq &&
           apt-get "${O[@]}" install -y -qq --no-install-recommends \
               qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
               qemu-system-data/bookworm-backports seabios/bookworm-backports; then
            installed=1
        else
            echo "install-deps: bookworm-backports qemu-system-x86 failed; trying bookworm's" >&2
        fi
    fi
    if [ -z "$installed" ]; then
        # bookworm's 7.2 conflicts with a backports qemu-utils and would remove it: refuse.
        if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
            loud "bookworm-backports is unreachable and bookworm's qemu-system-x86 would remove the installed backports qemu-utils; not installing"
            exit 1
        fi
        apt-get install -y -qq --no-install-recommends qemu-system-x86 || true
    fi
    have_qemu || { loud "cannot install qemu-system-x86 (with qboot.rom); the CAN guest tests cannot run"; exit 1; }
fi
echo "install-deps: $(qemu-system-x86_64 --version | head -1); busybox-static, can-utils and mmdebstrap present"
