# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_idem_global_optspecs
    string join \n db= q/quiet v/verbose log-format= h/help V/version
end

function __fish_idem_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_idem_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_idem_using_subcommand
    set -l cmd (__fish_idem_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c idem -n "__fish_idem_needs_command" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_needs_command" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_needs_command" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_needs_command" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_needs_command" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_needs_command" -f -a "run" -d 'Run COMMAND at most once per key'
complete -c idem -n "__fish_idem_needs_command" -f -a "inspect" -d 'Show the records in the store: a table, one record in detail, or JSON'
complete -c idem -n "__fish_idem_needs_command" -f -a "logs" -d 'Show the output of a key\'s run, in the order it was produced'
complete -c idem -n "__fish_idem_needs_command" -f -a "purge" -d 'Delete records: the named keys, or those the selectors pick'
complete -c idem -n "__fish_idem_needs_command" -f -a "stats" -d 'Sum up the store: records by state, replays, attempts, oldest runs, size'
complete -c idem -n "__fish_idem_needs_command" -f -a "check" -d 'Check that the store can keep the promise'
complete -c idem -n "__fish_idem_needs_command" -f -a "completions" -d 'Print a completion script for bash, zsh or fish'
complete -c idem -n "__fish_idem_needs_command" -f -a "man" -d 'Print a man page: idem\'s own, or a subcommand\'s'
complete -c idem -n "__fish_idem_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c idem -n "__fish_idem_using_subcommand run" -s k -l key -d 'The idempotency key (1 to 1024 bytes). Default: derived from COMMAND, `cmd:` + 32 hex digits of its fingerprint' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l ttl -d 'How long a finished run suppresses re-runs, counted from its end (90s, 5m, 1h 30m, 7d)' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l on-duplicate -d 'What a duplicate call does' -r -f -a "replay\t'Replay the stored stdout, stderr and exit status'
fail\t'Exit 76 when the key already completed'
wait\t'Wait for a running owner to finish, then act on its result'
skip\t'Exit 0 silently when the key completed or is running (for cron)'"
complete -c idem -n "__fish_idem_using_subcommand run" -l wait-timeout -d 'With --on-duplicate wait: give up (exit 75) after this long. Default: no bound' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l on-failure -d 'What a failed run (non-zero exit, signal, timeout) leaves behind' -r -f -a "unlock\t'A failed run is released: the next call runs COMMAND again'
lock\t'A failed run is final like a success: duplicates replay the failure'"
complete -c idem -n "__fish_idem_using_subcommand run" -l on-crash -d 'What to do when the record\'s owner crashed mid-run' -r -f -a "rerun\t'Take the record over and run COMMAND again (attempt + 1)'
block\t'Leave the record and exit 77 for an operator to check'"
complete -c idem -n "__fish_idem_using_subcommand run" -l max-output -d 'Store at most this much of each stream for replay (0 stores nothing)' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l timeout -d 'Stop COMMAND after this long: SIGTERM, SIGKILL 5s later, exit 124. Default: no limit' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l env -d 'Add an environment variable to the fingerprint (repeatable; unset differs from empty)' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l fingerprint-file -d 'Add the SHA-256 of this file\'s contents to the fingerprint (repeatable; a payload, a config, a build input). A missing file is a usage error' -r -F
complete -c idem -n "__fish_idem_using_subcommand run" -l label -d 'A note stored with the record and shown by inspect (up to 256 bytes; not part of the fingerprint), to tell which event a derived key belongs to' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l report -d 'When idem exits, write what happened as one JSON object to FILE (created 0600; /dev/fd/3 works): key, outcome (ran, replayed, joined, skipped, refused), reason, exit_code, attempt, took_over, record_status, started_at, finished_at, duration_ms, replays, store' -r -F
complete -c idem -n "__fish_idem_using_subcommand run" -l lease -d 'On PostgreSQL and Redis, how long a claim lives without renewal: it decides where process checks cannot (other hosts, other PID namespaces). The owner renews it every third of that, and stops COMMAND when no renewal was accepted for 0.9 of it less a grace (at least 1s; SQLite ignores it)' -r
complete -c idem -n "__fish_idem_using_subcommand run" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand run" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand run" -l cwd -d 'Add the working directory to the fingerprint'
complete -c idem -n "__fish_idem_using_subcommand run" -l fingerprint-stdin -d 'Read all of stdin, add its SHA-256 to the fingerprint, feed it to COMMAND unchanged (stdin on a terminal is a usage error)'
complete -c idem -n "__fish_idem_using_subcommand run" -l allow-mismatch -d 'Treat a key reused with a different fingerprint as a plain duplicate instead of exit 65'
complete -c idem -n "__fish_idem_using_subcommand run" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand run" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand run" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand inspect" -l status -d 'Only records with this status (crashed: in_progress, but its owner is gone)' -r -f -a "in_progress\t'Claimed; the command is running (or its owner crashed)'
completed\t'Finished; duplicates replay it'
failed\t'Finished with a failure and released'
crashed\t'In progress, but its owner is gone'"
complete -c idem -n "__fish_idem_using_subcommand inspect" -l prefix -d 'Only keys that start with this' -r
complete -c idem -n "__fish_idem_using_subcommand inspect" -l older-than -d 'Only records started longer ago than this (90s, 5m, 1h 30m, 7d)' -r
complete -c idem -n "__fish_idem_using_subcommand inspect" -l limit -d 'At most this many records, newest first' -r
complete -c idem -n "__fish_idem_using_subcommand inspect" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand inspect" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand inspect" -l expired -d 'Only expired records (finished longer ago than their TTL; treated as absent)'
complete -c idem -n "__fish_idem_using_subcommand inspect" -l json -d 'JSON Lines, one object per record: key, status, exit_code, signal, timed_out, command, cwd, label, fingerprint, started_at, finished_at, expires_at, lease_until, expired, crashed, duration_ms, attempts, replays, token (shared stores only, else null), owner {host, pid, alive}, child_pid, stdout_bytes, stderr_bytes, stdout_truncated, stderr_truncated. owner.alive is true only for an in_progress record whose owner lives'
complete -c idem -n "__fish_idem_using_subcommand inspect" -l stdout -d 'Write KEY\'s stored stdout, byte for byte'
complete -c idem -n "__fish_idem_using_subcommand inspect" -l stderr -d 'Write KEY\'s stored stderr, byte for byte'
complete -c idem -n "__fish_idem_using_subcommand inspect" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand inspect" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand inspect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand inspect" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand logs" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand logs" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand logs" -s f -l follow -d 'Keep writing as the run produces more; exit with its status when it ends (0 at once for a finished run; 77 if its owner crashed)'
complete -c idem -n "__fish_idem_using_subcommand logs" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand logs" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand logs" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand logs" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand purge" -l status -d 'Select records with this status' -r -f -a "in_progress\t'Claimed; the command is running (or its owner crashed)'
completed\t'Finished; duplicates replay it'
failed\t'Finished with a failure and released'
crashed\t'In progress, but its owner is gone'"
complete -c idem -n "__fish_idem_using_subcommand purge" -l older-than -d 'Select records started longer ago than this (90s, 5m, 1h 30m, 7d)' -r
complete -c idem -n "__fish_idem_using_subcommand purge" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand purge" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand purge" -l expired -d 'Select expired records: the default when no KEY and no selector is given'
complete -c idem -n "__fish_idem_using_subcommand purge" -l all -d 'Select every record'
complete -c idem -n "__fish_idem_using_subcommand purge" -l force -d 'Also purge in_progress records whose owner is alive (its command keeps running; its outcome is then lost)'
complete -c idem -n "__fish_idem_using_subcommand purge" -l dry-run -d 'List what would be purged and skipped; change nothing'
complete -c idem -n "__fish_idem_using_subcommand purge" -l json -d 'JSON Lines for scripts: {"key","action":"purge"|"skip",...} per listed record, then {"purged","skipped","dry_run"}'
complete -c idem -n "__fish_idem_using_subcommand purge" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand purge" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand purge" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand purge" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand stats" -l prefix -d 'Only keys that start with this' -r
complete -c idem -n "__fish_idem_using_subcommand stats" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand stats" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand stats" -l json -d 'One JSON object: store, records, running, crashed, completed, failed, expired, replays, max_attempt, oldest_running_seconds, oldest_crashed_seconds, size_bytes (null when unknown or none)'
complete -c idem -n "__fish_idem_using_subcommand stats" -l prometheus -d 'The Prometheus text exposition format (metrics idem_...)'
complete -c idem -n "__fish_idem_using_subcommand stats" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand stats" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand stats" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand stats" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand check" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand check" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand check" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand check" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand check" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand completions" -l keys -d 'The keys in the store that start with PREFIX, one a line (what the scripts offer after logs, inspect and purge)' -r
complete -c idem -n "__fish_idem_using_subcommand completions" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand completions" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand completions" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand completions" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand completions" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand man" -l db -d 'The store: a file path (SQLite), or a postgres:// or redis:// URL. Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db' -r -F
complete -c idem -n "__fish_idem_using_subcommand man" -l log-format -d 'How idem writes its own stderr lines: text, or one JSON object per line (level, message, key, event) for log shippers. COMMAND\'s output is never changed' -r -f -a "text\t'`idem: ...` lines'
json\t'One JSON object per line'"
complete -c idem -n "__fish_idem_using_subcommand man" -s q -l quiet -d 'Silence notices (errors are still printed)'
complete -c idem -n "__fish_idem_using_subcommand man" -s v -l verbose -d 'Explain each decision: run, replay, wait, takeover'
complete -c idem -n "__fish_idem_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c idem -n "__fish_idem_using_subcommand man" -s V -l version -d 'Print version'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "run" -d 'Run COMMAND at most once per key'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "inspect" -d 'Show the records in the store: a table, one record in detail, or JSON'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "logs" -d 'Show the output of a key\'s run, in the order it was produced'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "purge" -d 'Delete records: the named keys, or those the selectors pick'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "stats" -d 'Sum up the store: records by state, replays, attempts, oldest runs, size'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "check" -d 'Check that the store can keep the promise'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "completions" -d 'Print a completion script for bash, zsh or fish'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "man" -d 'Print a man page: idem\'s own, or a subcommand\'s'
complete -c idem -n "__fish_idem_using_subcommand help; and not __fish_seen_subcommand_from run inspect logs purge stats check completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

# After `--` come COMMAND and its arguments: complete them as a command line of
# their own (a command name, then what that command takes).
function __fish_idem_command_line
    set -l words (commandline -opc)
    set -l at (contains -i -- -- $words)
    or return 1
    set -l line
    if test $at -lt (count $words)
        set line (string escape -- $words[(math $at + 1)..-1])
    end
    complete -C "$(string join ' ' -- $line) $(commandline -ct)"
end

complete -c idem -n "__fish_idem_using_subcommand run; and contains -- -- (commandline -opc)" -f -a "(__fish_idem_command_line)"

# After logs, inspect and purge: the keys in the store (of the line's --db).
function __fish_idem_keys
    set -l words (commandline -opc)
    set -l db
    set -l at (contains -i -- --db $words)
    and set db --db $words[(math $at + 1)]
    $words[1] completions --keys=(commandline -ct) $db 2>/dev/null
end

complete -c idem -n "__fish_idem_using_subcommand inspect logs purge; and not string match -q -- '-*' (commandline -ct)" -f -a "(__fish_idem_keys)"
