# Hold this host's run lock (sd35_provision/hostlock.py) until stdin ends, i.e. until the run's SSH
# connection closes, however the run ends (done, Ctrl-C, SIGKILL, network gone): then `cat` sees
# end of file and exits, and with it the last holder of descriptor 9, which releases the flock.
set -u
umask 022
lock=@lock_file@
wait_s=@wait_s@
exec 9>>"$lock"
if ! flock -n 9; then
    printf 'busy %s\n' "$(head -n 1 "$lock")"
    if [ "$wait_s" -eq 0 ] || ! flock -w "$wait_s" 9; then
        printf 'refused %s\n' "$(head -n 1 "$lock")"
        exit 75
    fi
fi
printf '%s\n' @holder@ > "$lock"
echo locked
exec cat >/dev/null
