#!/bin/sh
# Postern agent installer, served by a Postern bastion on its agent port.
#
# Run it as the bastion's `install_command` prints it: that line fetched this
# script with the bastion's CA pinned (curl --cacert), and this script pins the
# same CA for the package and checks the package's sha256, carried below,
# before installing it. Nothing on the way is trusted on first use.
#
#   sh -c "$script" postern-install --controller URL --token pet_... --ca-hash sha256:... [--hostname H] [--data-dir D]
#
# It installs the agent package (dpkg), joins with the arguments it is given
# (unless the data directory already holds an enrollment), and starts the
# agent's unit when systemd runs; otherwise it prints how to start the agent.
set -eu

# The bastion's agent port(s), tried in turn for the package.
CONTROLLERS='@CONTROLLERS@'
# The bastion's CA: the only certificate authority trusted for the download.
CA_PEM='@CA_PEM@'

# The agent packages this bastion serves: "<file> <sha256>" for an architecture.
package_for() {
    case "$1" in
@PACKAGES@
    *) return 1 ;;
    esac
}

say() { printf 'postern-install: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
# $1 as one shell word, for a command shown to be copied.
quote() {
    case "$1" in
    *[!A-Za-z0-9/._-]* | '') printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
    esac
}

main() {
    [ "$(id -u)" = 0 ] || die "run this as root (sudo sh -c \"\$s\" postern-install ...)"
    [ $# -gt 0 ] || die "no join arguments: run the install command as the bastion printed it"
    command -v dpkg >/dev/null 2>&1 ||
        die "this installs a Debian package and there is no dpkg here: install postern-agent by hand, then run postern-agent join with these arguments"
    command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
    command -v sha256sum >/dev/null 2>&1 || die "sha256sum is needed (coreutils)"

    data_dir=/var/lib/postern-agent
    prev=
    for a in "$@"; do
        case "$prev" in --data-dir) data_dir=$a ;; esac
        case "$a" in --data-dir=*) data_dir=${a#--data-dir=} ;; esac
        prev=$a
    done

    arch=$(dpkg --print-architecture)
    entry=$(package_for "$arch") || die "this bastion serves no agent package for $arch (only: @ARCHES@)"
    file=${entry%% *}
    sum=${entry#* }

    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    trap 'exit 130' INT TERM
    printf '%s\n' "$CA_PEM" >"$tmp/ca.pem"
    got=
    # Split on commas only, with globbing off: an IPv6 URL's brackets are not
    # a file pattern.
    set -f
    old_ifs=$IFS
    IFS=,
    for url in $CONTROLLERS; do
        IFS=$old_ifs
        # --capath /dev/null: the bastion's CA and no other, not the system's
        # store as well (curl keeps it beside --cacert).
        if curl -fsS --retry 3 --proto =https --tlsv1.3 --http1.1 --cacert "$tmp/ca.pem" \
            --capath /dev/null -o "$tmp/$file" "${url%/}@PACKAGES_PATH@$file"; then
            got=1
            break
        fi
        say "could not download $file from $url"
    done
    IFS=$old_ifs
    set +f
    [ -n "$got" ] || die "could not download $file from any of $CONTROLLERS"
    actual=$(sha256sum "$tmp/$file" | cut -d' ' -f1)
    [ "$actual" = "$sum" ] || die "$file has sha256 $actual, but the bastion said $sum: not installing it"
    say "installing $file (sha256 $sum)"
    POSTERN_INSTALL_SCRIPT=1 dpkg -i "$tmp/$file" </dev/null

    if [ -e "$data_dir/agent.json" ]; then
        say "$(quote "$data_dir") already holds an enrollment: not joining again (purge postern-agent, or delete it, to join anew)"
    else
        postern-agent join "$@" </dev/null
    fi

    if [ -d /run/systemd/system ] && [ "$data_dir" = /var/lib/postern-agent ]; then
        systemctl enable postern-agent.service
        systemctl restart postern-agent.service
        say "postern-agent.service is enabled and running"
    elif [ -d /run/systemd/system ]; then
        say "postern-agent.service uses /var/lib/postern-agent; start this agent with: postern-agent run --data-dir $(quote "$data_dir") --sshd-port 22"
    else
        say "systemd is not running here: start the agent with: postern-agent run --data-dir $(quote "$data_dir") --sshd-port 22"
    fi
    # Said only while the link is missing: a re-run on a node set up for SSH
    # has nothing to do there.
    if [ ! -e /etc/ssh/sshd_config.d/postern.conf ]; then
        say "for SSH through the bastion: ln -s /usr/share/postern-agent/sshd_config.d/postern.conf /etc/ssh/sshd_config.d/postern.conf, reload sshd, then run: postern-agent doctor"
    fi
}

# Last, so that a script cut short in transit runs nothing.
main "$@"
