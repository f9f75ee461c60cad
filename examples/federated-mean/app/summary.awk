# Count, sum and missing values of the column named `column` of a comma-separated file whose
# first row names the columns. Empty and NA values count as missing; any other value that is
# not a number stops the run (exit 1, message on stderr naming the line, never the value).
# On success writes output/summary.json.

function trim(text) {
    sub(/^[ \t"]+/, "", text)
    sub(/[ \t"]+$/, "", text)
    return text
}

function json_string(text,    out, i, c) {
    out = ""
    for (i = 1; i <= length(text); i++) {
        c = substr(text, i, 1)
        if (c == "\\" || c == "\"")
            out = out "\\"
        out = out c
    }
    return "\"" out "\""
}

function refuse(message) {
    print "federated-mean at " site ": " message > "/dev/stderr"
    refused = 1
    exit 1
}

{ sub(/\r$/, "") }

NR == 1 {
    width = NF
    names = ""
    for (i = 1; i <= NF; i++) {
        names = names (i > 1 ? ", " : "") trim($i)
        if (trim($i) == column)
            field = i
    }
    if (!field)
        refuse("column '" column "' is not in " FILENAME " (its columns: " names ")")
    next
}

NF == 0 { next }

NF != width { refuse("line " NR " has " NF " fields, the header row " width) }

{
    value = trim($field)
    if (value == "" || value == "NA") {
        missing++
        next
    }
    if (value !~ /^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$/)
        refuse("line " NR ": column '" column "' holds a value that is not a number")
    count++
    total += value
}

END {
    if (refused)
        exit 1
    if (NR == 0)
        refuse(FILENAME " is empty (no header row)")
    printf "{\"site\": %s, \"column\": %s, \"count\": %d, \"sum\": %.17g, \"missing\": %d}\n", \
        json_string(site), json_string(column), count, total, missing > (output "/summary.json")
}
