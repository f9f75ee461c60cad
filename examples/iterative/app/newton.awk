# Gradient, information matrix and log-likelihood of a logistic regression at the given
# coefficients, summed over this site's rows: the site's share of one Newton-Raphson step.
# Rows with an empty or NA value in a used column are skipped (and counted); any other value
# that is not a number, or an outcome other than 0/1, stops the run (exit 1, message on
# stderr naming the line, never the value). On success writes output/newton.json.
#
# Debian's busybox-static awk has no math library (no exp, log or ^), so exp and log are
# computed here; both agree with libm to about 1e-15 relative.

function exp_(x,    k, r, term, sum, i, factor) {
    if (x > 700)
        x = 700
    if (x < -700)
        return 0
    # x = k ln2 + r with |r| <= ln2/2; e^r by its Taylor series; then times 2^k.
    k = int(x / LN2 + (x >= 0 ? 0.5 : -0.5))
    r = (x - k * LN2_HI) - k * LN2_LO
    term = 1
    sum = 1
    for (i = 1; i <= 22; i++) {
        term = term * r / i
        sum += term
    }
    factor = k >= 0 ? 2 : 0.5
    if (k < 0)
        k = -k
    while (k-- > 0)
        sum *= factor
    return sum
}

function log_(x,    e, s, s2, term, sum, i) {
    # x = m 2^e with m in [1/sqrt2, sqrt2]; log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172.
    e = 0
    while (x > SQRT2) {
        x /= 2
        e++
    }
    while (x < 1 / SQRT2) {
        x *= 2
        e--
    }
    s = (x - 1) / (x + 1)
    s2 = s * s
    term = s
    sum = 0
    for (i = 1; i <= 41; i += 2) {
        sum += term / i
        term *= s2
    }
    return 2 * sum + e * LN2
}

# log(1 + u), accurate for small u too
function log1p_(u) {
    if (u < 1e-4 && u > -1e-4)
        return u * (1 - u * (1 / 2 - u * (1 / 3 - u / 4)))
    return log_(1 + u)
}

# log(1 + e^eta), without overflow
function softplus(eta) {
    if (eta > 36)
        return eta + exp_(-eta)
    return log1p_(exp_(eta))
}

function trim(text) {
    sub(/^[ \t"]+/, "", text)
    sub(/[ \t"]+$/, "", text)
    return text
}

function is_number(text) {
    return text ~ /^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$/
}

function refuse(message) {
    print "logistic-newton at " site ": " message > "/dev/stderr"
    refused = 1
    exit 1
}

function json_number_list(values, n,    out, i) {
    out = ""
    for (i = 1; i <= n; i++)
        out = out (i > 1 ? ", " : "") sprintf("%.17g", values[i])
    return "[" out "]"
}

BEGIN {
    LN2 = 0.69314718055994531
    LN2_HI = 0.693145751953125
    LN2_LO = 1.4286068203094173e-06
    SQRT2 = 1.4142135623730951
    k = split(predictors, names, ",")
    p = split(coefficients, beta, ",")
    if (p != k + 1)
        refuse(p " coefficients for " k " predictors: give the intercept and one per predictor")
    for (j = 1; j <= p; j++) {
        if (!is_number(trim(beta[j])))
            refuse("coefficient " j " is not a number")
        beta[j] = trim(beta[j]) + 0
    }
    if (round !~ /^[0-9]+$/)
        refuse("round is not a whole number")
}

{ sub(/\r$/, "") }

NR == 1 {
    width = NF
    for (i = 1; i <= NF; i++)
        position[trim($i)] = i
    header = $0
    if (!(outcome in position))
        refuse("column '" outcome "' is not in " FILENAME " (its columns: " header ")")
    y_field = position[outcome]
    for (j = 1; j <= k; j++) {
        if (!(trim(names[j]) in position))
            refuse("column '" trim(names[j]) "' is not in " FILENAME " (its columns: " header ")")
        x_field[j + 1] = position[trim(names[j])]
    }
    next
}

NF == 0 { next }

NF != width { refuse("line " NR " has " NF " fields, the header row " width) }

{
    y = trim($y_field)
    if (y == "" || y == "NA") {
        skipped++
        next
    }
    if (y != "0" && y != "1")
        refuse("line " NR ": outcome '" outcome "' is not 0 or 1")
    x[1] = 1
    for (j = 2; j <= p; j++) {
        value = trim($(x_field[j]))
        if (value == "" || value == "NA") {
            skipped++
            next
        }
        if (!is_number(value))
            refuse("line " NR ": column '" trim(names[j - 1]) "' holds a value that is not a number")
        x[j] = value + 0
    }
    eta = 0
    for (j = 1; j <= p; j++)
        eta += beta[j] * x[j]
    mu = 1 / (1 + exp_(-eta))
    weight = mu * (1 - mu)
    for (a = 1; a <= p; a++) {
        gradient[a] += (y - mu) * x[a]
        for (b = 1; b <= a; b++)
            information[a, b] += weight * x[a] * x[b]
    }
    loglik += y * eta - softplus(eta)
    count++
}

END {
    if (refused)
        exit 1
    if (NR == 0)
        refuse(FILENAME " is empty (no header row)")
    rows = ""
    for (a = 1; a <= p; a++) {
        for (b = 1; b <= p; b++)
            row[b] = a >= b ? information[a, b] : information[b, a]
        rows = rows (a > 1 ? ", " : "") json_number_list(row, p)
    }
    file = output "/newton.json"
    printf "{\"site\": \"%s\", \"round\": %d, \"count\": %d, \"skipped\": %d, ", \
        site, round, count, skipped > file
    printf "\"loglik\": %.17g, \"gradient\": %s, \"information\": [%s]}\n", \
        loglik, json_number_list(gradient, p), rows > file
}
