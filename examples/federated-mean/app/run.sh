#!/bin/sh
# federated-mean, at one site: the count and the sum of one column of this site's patients.csv.
# Only those numbers leave the site. Messages never quote a data value: the log is published.
#
#   task config:  column: age
#   reads:        $PATIENTS_CSV (default /data/patients.csv; a site may set it in its config)
#   writes:       $PTM_OUTPUT/summary.json  {"site", "column", "count", "sum", "missing"}
set -eu

config="${PTM_CONFIG:-/ptm/config/config.yaml}"
output="${PTM_OUTPUT:-/ptm/output}"
data="${PATIENTS_CSV:-/data/patients.csv}"
site="${PTM_SITE:-unknown}"

fail() {
    echo "federated-mean at $site: $*" >&2
    exit 1
}

column="$(awk -v key=column -f /app/config.awk "$config")" \
    || fail "the task config has no 'column' (for example: config: {column: age})"
[ -n "$column" ] || fail "the task config's 'column' is empty"
[ -r "$data" ] || fail "no readable data file $data at this site"

awk -F, -v column="$column" -v site="$site" -v output="$output" -f /app/summary.awk "$data"
echo "federated-mean at $site: summary of column '$column' written"
