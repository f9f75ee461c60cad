#!/bin/sh
# One round of federated logistic regression (Newton-Raphson), at one site: for the current
# coefficients, the gradient and the information matrix (minus the Hessian) of this site's
# log-likelihood. Those sums leave the site, never a row. Messages never quote a data value.
#
#   task config:  round: 3
#                 outcome: event
#                 predictors: [age, bmi, smoker]
#                 coefficients: [b0, b_age, b_bmi, b_smoker]    (intercept first)
#   reads:        $PATIENTS_CSV (default /data/patients.csv; a site may set it in its config)
#   writes:       $PTM_OUTPUT/newton.json
set -eu

config="${PTM_CONFIG:-/ptm/config/config.yaml}"
output="${PTM_OUTPUT:-/ptm/output}"
data="${PATIENTS_CSV:-/data/patients.csv}"
site="${PTM_SITE:-unknown}"

fail() {
    echo "logistic-newton at $site: $*" >&2
    exit 1
}

# A list from the config, comma-separated on one line (empty when the key is absent).
config_list() {
    awk -v key="$1" -f /app/config.awk "$config" | tr '\n' ',' | sed 's/,$//'
}

round="$(awk -v key=round -f /app/config.awk "$config")" || fail "the task config has no 'round'"
outcome="$(awk -v key=outcome -f /app/config.awk "$config")" \
    || fail "the task config has no 'outcome' (the 0/1 column to model)"
predictors="$(config_list predictors)"
coefficients="$(config_list coefficients)"
[ -n "$predictors" ] || fail "the task config has no 'predictors' (a list of columns)"
[ -n "$coefficients" ] || fail "the task config has no 'coefficients' (intercept first)"
[ -r "$data" ] || fail "no readable data file $data at this site"

awk -F, -v site="$site" -v round="$round" -v outcome="$outcome" -v predictors="$predictors" \
    -v coefficients="$coefficients" -v output="$output" -f /app/newton.awk "$data"
echo "logistic-newton at $site: round $round written"
