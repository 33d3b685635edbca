#!/bin/sh
# The image's entry point: one name for each FLUX Gateway command.
#
#   flux controlplane [ARGS]   flux-controlplane
#   flux node [ARGS]           flux-node
#   flux tunnel [ARGS]         flux-tunnel
#   flux ctl [ARGS]            fluxctl
#   flux echo-upstream [ARGS]  the demo upstream (answers /echo, /healthz, ...)
#   flux version               every command's version
#   anything else              run as given (sh, python, ...)
set -eu

command="${1:-help}"
if [ "$#" -gt 0 ]; then
    shift
fi

case "$command" in
    controlplane | flux-controlplane) exec flux-controlplane "$@" ;;
    node | flux-node) exec flux-node "$@" ;;
    tunnel | flux-tunnel) exec flux-tunnel "$@" ;;
    ctl | fluxctl) exec fluxctl "$@" ;;
    echo-upstream) exec python /opt/flux/echo_upstream.py "$@" ;;
    version | --version)
        for tool in flux-controlplane flux-node flux-tunnel fluxctl; do
            "$tool" --version
        done
        ;;
    help | -h | --help)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *) exec "$command" "$@" ;;
esac
