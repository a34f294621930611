#!/usr/bin/env bash
# Autoscaling lifecycle hook for splicer (docs/quay-ha.md, "Autoscaling with lifecycle hooks").
#
#   lifecycle-hook.sh launch INSTANCE      a machine was launched: add it to the pool and wait
#                                          until it is up (passing health checks)
#   lifecycle-hook.sh terminate INSTANCE   a machine is about to terminate: remove it from the
#                                          pool and wait until its connections drained and it
#                                          is gone
#
# INSTANCE is an EC2 instance id: its private IP is looked up with the AWS CLI, and once splicer
# is done the lifecycle action is completed (CONTINUE; a launch that never came up is
# ABANDONed, so the group replaces the machine). With SKIP_AWS=1, INSTANCE is the machine's IP
# address and no AWS call is made: the splicer part alone, for other clouds, tests and drills.
#
# Environment:
#   SPLICER_POOL            pool to change                          (default quay)
#   BACKEND_PORT            the machines' port behind splicer       (default 8443)
#   SPLICER_ADMIN           splicer's admin API                     (default http://127.0.0.1:9090)
#   SPLICER_TOKEN_FILE      admin token file, when admin.token_file is set
#                                                                   (default /etc/splicer/admin.token if it exists)
#   SPLICER                 the splicer binary                      (default splicer, from PATH)
#   WAIT_TIMEOUT            longest wait for up / drained; keep it under the hook's heartbeat
#                           timeout and above runtime.drain_timeout (default 600s)
#   ASG_NAME, HOOK_NAME     the Auto Scaling group and its lifecycle hook (unless SKIP_AWS=1)
#   LIFECYCLE_ACTION_TOKEN  the event's token, if you have it (the instance id suffices)
#
# Exit status: 0 when the machine is in (launch) or drained and out (terminate); otherwise
# splicer's exit status (1 refused or timed out, 2 usage). The lifecycle action is completed
# either way, so the group never waits for the hook's heartbeat timeout.

set -euo pipefail

usage() {
    echo "usage: $0 launch|terminate INSTANCE-ID (or, with SKIP_AWS=1, the machine's IP)" >&2
    exit 2
}

[ $# -eq 2 ] || usage
transition=$1
instance=$2
case "$transition" in
    launch | terminate) ;;
    *) usage ;;
esac

pool=${SPLICER_POOL:-quay}
port=${BACKEND_PORT:-8443}
splicer=${SPLICER:-splicer}
wait_timeout=${WAIT_TIMEOUT:-600s}
skip_aws=${SKIP_AWS:-0}
export SPLICER_ADMIN=${SPLICER_ADMIN:-http://127.0.0.1:9090}
if [ -z "${SPLICER_TOKEN_FILE:-}" ] && [ -r /etc/splicer/admin.token ]; then
    export SPLICER_TOKEN_FILE=/etc/splicer/admin.token
fi

log() {
    echo "lifecycle-hook: $*" >&2
}

# The machine's private IP: from EC2, or the argument itself with SKIP_AWS=1.
machine_ip() {
    if [ "$skip_aws" = 1 ]; then
        echo "$instance"
        return
    fi
    aws ec2 describe-instances \
        --instance-ids "$instance" \
        --query 'Reservations[0].Instances[0].PrivateIpAddress' \
        --output text
}

# Tells the Auto Scaling group the hook is done ($1: CONTINUE or ABANDON).
complete_action() {
    if [ "$skip_aws" = 1 ]; then
        log "SKIP_AWS=1: not completing the lifecycle action ($1)"
        return 0
    fi
    : "${ASG_NAME:?set ASG_NAME to the Auto Scaling group name}"
    : "${HOOK_NAME:?set HOOK_NAME to the lifecycle hook name}"
    local token_args=()
    if [ -n "${LIFECYCLE_ACTION_TOKEN:-}" ]; then
        token_args=(--lifecycle-action-token "$LIFECYCLE_ACTION_TOKEN")
    fi
    aws autoscaling complete-lifecycle-action \
        --auto-scaling-group-name "$ASG_NAME" \
        --lifecycle-hook-name "$HOOK_NAME" \
        --instance-id "$instance" \
        --lifecycle-action-result "$1" \
        ${token_args[@]+"${token_args[@]}"}
}

ip=$(machine_ip)
if [ -z "$ip" ] || [ "$ip" = None ]; then
    log "no private IP for $instance"
    complete_action ABANDON
    exit 1
fi
case "$ip" in
    *:*) address="[$ip]:$port" ;; # IPv6
    *) address="$ip:$port" ;;
esac

status=0
case "$transition" in
    launch)
        log "adding $address to pool $pool; waiting until it is up"
        # A retried hook finds the machine already added: then wait for it like an enable.
        if ! "$splicer" backend add "$pool" "$address" --wait --timeout "$wait_timeout"; then
            "$splicer" backend enable "$pool" "$address" --wait --timeout "$wait_timeout" || status=$?
        fi
        if [ "$status" -eq 0 ]; then
            complete_action CONTINUE
        else
            log "$address did not come up (exit $status): abandoning the launch"
            complete_action ABANDON
        fi
        ;;
    terminate)
        log "removing $address from pool $pool; waiting until its connections drained"
        "$splicer" backend remove "$pool" "$address" --wait --timeout "$wait_timeout" || status=$?
        if [ "$status" -ne 0 ]; then
            log "removing $address failed (exit $status); the machine terminates anyway"
        fi
        # The instance terminates whatever the result; CONTINUE lets it go at once.
        complete_action CONTINUE
        ;;
esac
exit "$status"
