# Print one top-level key of the task's config.yaml: a scalar on one line, a list one item a
# line. The agent writes that file with PyYAML (block style: "key: value", "key:" then "- item"
# lines); flow lists ("key: [a, b]") and quoted scalars are understood too. Exit 3 when the key
# is absent. Usage: awk -v key=column -f config.awk /ptm/config/config.yaml

function unquote(text) {
    sub(/^[ \t]+/, "", text)
    sub(/[ \t\r]+$/, "", text)
    if (text ~ /^'.*'$/ || text ~ /^".*"$/)
        text = substr(text, 2, length(text) - 2)
    return text
}

function print_flow_list(text,    items, count, i, item) {
    count = split(substr(text, 2, length(text) - 2), items, ",")
    for (i = 1; i <= count; i++) {
        item = unquote(items[i])
        if (item != "")
            print item
    }
}

in_list && /^[ ]*- / {
    item = $0
    sub(/^[ ]*- /, "", item)
    print unquote(item)
    next
}

in_list { exit }

index($0, key ":") == 1 {
    found = 1
    value = unquote(substr($0, length(key) + 2))
    if (value == "")
        in_list = 1
    else if (value ~ /^\[.*\]$/) {
        print_flow_list(value)
        exit
    } else {
        print value
        exit
    }
}

END {
    if (!found)
        exit 3
}
