# Shared helpers for tests/images/*.sh (sourced, not executed).
# shellcheck shell=bash

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Print "URI<TAB>SUITE" for every Debian source the host's apt knows about, in
# file order: one-line (*.list) and deb822 (*.sources) formats. The mirror is
# never written into the repo; it is read here at run time.
host_apt_sources() {
    local f etc=${APT_ETC:-/etc/apt}   # APT_ETC: for testing this parser
    for f in "$etc/sources.list" "$etc"/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        # deb [opts] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
            awk '$1 == "deb" && NF >= 3 { printf "%s\t%s\n", $2, $3 }'
    done
    for f in "$etc"/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # deb822 stanzas separated by blank lines; keys are case-insensitive.
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled !~ /^[Nn]o/) {
                    n = split(uris, u, " "); m = split(suites, s, " ")
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) printf "%s\t%s\n", u[i], s[j]
                }
                types = ""; uris = ""; suites = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, "")
                if (key == "types") types = $0
                else if (key == "uris") uris = $0
                else if (key == "suites") suites = $0
                else if (key == "enabled") enabled = $0
            }
            END { flush() }
        ' "$f"
    done
}

# (The awk programs read to the end instead of exiting early: an early exit
# would SIGPIPE the producer and fail the pipeline under pipefail.)
# Mirror serving SUITE (e.g. bookworm) / SUITE-security. Overridable with
# CLAUDE_DB_DEBIAN_MIRROR / CLAUDE_DB_DEBIAN_SECURITY_MIRROR.
debian_mirror() {
    local suite=$1 uri
    if [ -n "${CLAUDE_DB_DEBIAN_MIRROR:-}" ]; then echo "$CLAUDE_DB_DEBIAN_MIRROR"; return; fi
    uri=$(host_apt_sources | awk -F'\t' -v s="$suite" '!done && $2 == s { print $1; done = 1 }')
    # Host on another release: any source whose suite is not -security/-updates/-backports.
    [ -n "$uri" ] || uri=$(host_apt_sources | awk -F'\t' '!done && $2 !~ /-(security|updates|backports)$/ && $1 ~ /debian/ { print $1; done = 1 }')
    [ -n "$uri" ] || die "no Debian mirror found in the host's apt sources (set CLAUDE_DB_DEBIAN_MIRROR)"
    echo "${uri%/}"
}
debian_security_mirror() {
    local suite=$1 uri
    if [ -n "${CLAUDE_DB_DEBIAN_SECURITY_MIRROR:-}" ]; then echo "$CLAUDE_DB_DEBIAN_SECURITY_MIRROR"; return; fi
    uri=$(host_apt_sources | awk -F'\t' -v s="$suite-security" '!done && $2 == s { print $1; done = 1 }')
    [ -n "$uri" ] || uri=$(host_apt_sources | awk -F'\t' '!done && $2 ~ /-security$/ { print $1; done = 1 }')
    echo "${uri%/}"   # may be empty: then the image simply has no security source
}
