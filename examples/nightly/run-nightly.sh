#!/usr/bin/env bash
# Run a batchrun job from cron or a systemd timer, and turn its exit code into what the
# scheduler should do.
#
#   run-nightly.sh [batchrun run options...]      e.g. --set run.concurrency=4
#   crontab:  30 2 * * *  cd /opt/batchrun && examples/nightly/run-nightly.sh
#
#   batchrun  meaning                          this script
#   0         every row succeeded              log it; exit 0
#   3         finished, rows in errors file    alert; re-drive once with --retry-errors (and more
#                                              attempts); exit 0 if that clears them, else 3
#   4         budget or deadline reached       log it; exit 0: the next run resumes where it stopped
#   130/143   interrupted (SIGINT/SIGTERM)     log it; exit with the same code; the next run resumes
#   5         endpoint failed / never ready    page, naming the endpoint; exit 5
#   6         endpoint NOT put to rest         page, naming the endpoint (it may be billing); exit 6
#   1, 2      internal error / bad job         alert; exit with the same code
#
# Every batchrun run leaves its JSON summary in $NIGHTLY_LOG_DIR/runs/<time>-<step>.json (its
# stderr next to it, .log), and one line per run in $NIGHTLY_LOG_DIR/nightly.log.
#
# Settings (environment):
#   NIGHTLY_JOB        job file (default: job.toml next to this script)
#   NIGHTLY_LOG_DIR    where logs go (default: $LOGS_DIRECTORY under systemd, else out/nightly/logs)
#   NIGHTLY_ALERT_CMD  shell command that gets an alert on stdin, e.g. 'mail -s batchrun ops@example.com'
#   NIGHTLY_PAGE_CMD   shell command that gets a page on stdin (default: NIGHTLY_ALERT_CMD)
#   NIGHTLY_REDRIVE_ARGS  extra options for the re-drive (default: --set run.max_attempts=10)
#   BATCHRUN           the batchrun command (default: batchrun)
# Alerts and pages also go to stderr (cron mails it; systemd keeps it in the journal); a run
# that needs no one's attention prints nothing.

set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
job=${NIGHTLY_JOB:-$here/job.toml}
log_dir=${NIGHTLY_LOG_DIR:-${LOGS_DIRECTORY:-$here/../../out/nightly/logs}}
alert_cmd=${NIGHTLY_ALERT_CMD:-}
page_cmd=${NIGHTLY_PAGE_CMD:-$alert_cmd}
redrive_args=${NIGHTLY_REDRIVE_ARGS:---set run.max_attempts=10}
read -r -a batchrun <<<"${BATCHRUN:-batchrun}"
mkdir -p "$log_dir/runs"

say() { # one line in nightly.log (nothing on stdout/stderr: cron mails only alerts)
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$log_dir/nightly.log"
}

notify() { # notify CMD MESSAGE: the message in nightly.log, on stderr and on CMD's stdin
    say "$2"
    printf '%s\n' "$2" >&2
    if [ -n "$1" ]; then
        printf '%s\n' "$2" | sh -c "$1" || say "notification command failed: $1"
    fi
}

field() { # field NAME FILE: a number or string from batchrun's one-line JSON summary
    sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$2" 2>/dev/null | head -n 1
}

endpoint_name() { # the job's endpoint, with a --set endpoint.name=... override if given
    local name="" prev=""
    name=$(awk '/^\[/{s=$0} s=="[endpoint]" && /^name *=/ && match($0, /"[^"]*"/){print substr($0, RSTART+1, RLENGTH-2); exit}' "$job")
    for arg in "$@"; do
        case "$prev$arg" in
            --setendpoint.name=* | --set=endpoint.name=*) name=${arg#*endpoint.name=} ;;
        esac
        prev=$arg
    done
    printf '%s' "${name:-(no endpoint name in $job)}"
}

# Run batchrun in the background and wait for it, so that a SIGINT/SIGTERM sent to this
# script (systemd's stop, a Ctrl-C) reaches batchrun, which stops, commits and pauses the
# endpoint before exiting 130/143 -- and this script still logs the outcome. Job control
# puts batchrun in its own process group, so a Ctrl-C on a terminal reaches it once, through
# this script (a second SIGINT would tell batchrun not to wait for the requests in flight).
set -m
child=""
signalled=0
stopped="" # the first stop signal's name: forwarded even if it came before `child` was set
forward() {
    signalled=1
    [ -n "$stopped" ] || stopped=$1
    [ -n "$child" ] && kill "-$1" "$child" 2>/dev/null
}
trap 'forward INT' INT
trap 'forward TERM' TERM

run_batchrun() { # run_batchrun STEP ARGS...: sets $code, $summary, $errlog
    local step=$1
    shift
    local stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    summary="$log_dir/runs/$stamp-$step.json"
    errlog="$log_dir/runs/$stamp-$step.log"
    "${batchrun[@]}" run "$job" "$@" >"$summary" 2>"$errlog" </dev/null &
    child=$!
    [ -z "$stopped" ] || kill "-$stopped" "$child" 2>/dev/null # a stop during the start
    while :; do
        signalled=0
        code=0
        wait "$child" || code=$?
        [ "$signalled" = 1 ] || break # a trapped signal interrupts `wait`: wait again
    done
    child=""
    [ -s "$summary" ] || rm -f "$summary"
}

last_error() { # batchrun's one-line error message, else its last line of stderr
    grep -h '^batchrun: error:' "$errlog" 2>/dev/null | tail -n 1 | grep . || tail -n 1 "$errlog"
}

handle() { # handle STEP: act on $code; returns this script's exit code
    local step=$1
    shift
    case $code in
        0)
            say "$step: done: $(field succeeded "$summary") rows succeeded, $(field skipped_done "$summary") were already done"
            return 0 ;;
        3)
            local failed errors
            failed=$(field errors_total "$summary")
            errors=$(field errors_path "$summary")
            if [ "$step" = run ]; then
                notify "$alert_cmd" "batchrun nightly: $failed rows failed ($errors); re-driving them with --retry-errors"
                return 3
            fi
            notify "$alert_cmd" "batchrun nightly: $failed rows still failed after the re-drive; see $errors"
            return 3 ;;
        4)
            say "$step: stopped by a limit ($(field stop_reason "$summary")) after $(field succeeded "$summary") rows, cost \$$(field cost_usd "$summary"); the next run resumes"
            return 0 ;;
        130 | 143)
            say "$step: interrupted (exit $code) after $(field succeeded "$summary") rows; the next run resumes"
            return "$code" ;;
        5)
            notify "$page_cmd" "PAGE batchrun nightly: endpoint $(endpoint_name "$@") failed or never became ready (exit 5): $(last_error)"
            return 5 ;;
        6)
            notify "$page_cmd" "PAGE batchrun nightly: endpoint $(endpoint_name "$@") could NOT be put to rest and may be billing (exit 6): $(last_error)"
            return 6 ;;
        *)
            notify "$alert_cmd" "batchrun nightly: exit $code: $(last_error)"
            return "$code" ;;
    esac
}

say "run: batchrun run $job $*"
run_batchrun run "$@"
handle run "$@"
status=$?
if [ "$status" = 3 ] && [ -z "$stopped" ]; then # no re-drive after a stop (systemd, Ctrl-C)
    # shellcheck disable=SC2086 # NIGHTLY_REDRIVE_ARGS is a list of words
    run_batchrun redrive "$@" --retry-errors $redrive_args
    handle redrive "$@"
    status=$?
fi
exit "$status"
