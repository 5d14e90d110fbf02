use proptest::prelude::*;
use serde_json::json;
use serde_json::Value;

use super::*;

/// A `/v1/health/service` entry.
fn health() -> Value {
    json!({
        "Node": {
            "ID": "n1-id", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.0.0.1", "wan": "192.0.2.1"},
            "Meta": {"rack": "r1", "os": "linux", "empty": ""},
            "CreateIndex": 5, "ModifyIndex": 18446744073709551615u64
        },
        "Service": {
            "ID": "web-1", "Service": "web", "Tags": ["v1", "primary"], "Address": "",
            "Meta": {"version": "1.2", "foo-bar": "baz"}, "Port": 8080,
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
            "Proxy": null, "Ratio": 0.5
        },
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceTags": []},
            {"CheckID": "service:web-1", "Status": "critical", "ServiceTags": ["v1"]}
        ]
    })
}

/// A `/v1/catalog/service` entry.
fn catalog() -> Value {
    json!({
        "ID": "n1-id", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
        "NodeMeta": {"os": "linux"}, "ServiceName": "api-internal", "ServiceID": "api-1",
        "ServiceTags": ["v2", "primary"], "ServiceMeta": {"foo": "bar", "env": "qa"},
        "ServicePort": 9090, "ServiceTaggedAddresses": null, "ServiceEnableTagOverride": true
    })
}

fn eval_on(src: &str, v: &Value) -> Result<bool, FilterError> {
    Filter::parse(src)?.matches(v)
}

/// Whether `src` holds for the health entry; panics on an error.
fn yes(src: &str) -> bool {
    eval_on(src, &health()).unwrap_or_else(|e| panic!("{src}: {e}"))
}

/// The error `src` gives on parsing or on the health entry.
fn err(src: &str) -> String {
    match eval_on(src, &health()) {
        Ok(b) => panic!("{src}: evaluated to {b}, wanted an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn equality_on_strings_numbers_and_bools() {
    assert!(yes("Service.Service == web"));
    assert!(yes("Service.Service == \"web\""));
    assert!(yes("Service.Service == `web`"));
    assert!(!yes("Service.Service == webx"));
    assert!(yes("Service.Service != api"));
    assert!(yes("Service.Service==web"));
    assert!(yes("Service.Port == 8080"));
    assert!(yes("Service.Port == \"8080\""));
    assert!(yes("Service.Port == \"0x1f90\""), "Go's base prefixes");
    assert!(yes("Service.Port == \"8_080\""), "Go's underscores");
    assert!(yes("Service.Port != 80"));
    assert!(yes("Service.Ratio == 0.5"));
    assert!(yes("Service.Ratio == \"5e-1\""));
    assert!(yes("Node.ModifyIndex == 18446744073709551615"), "a uint64");
    assert!(yes("Service.EnableTagOverride == false"));
    assert!(yes("Service.EnableTagOverride == F"));
    assert!(yes("Service.EnableTagOverride != true"));
    assert!(yes("Service.Address == \"\""));
}

#[test]
fn literals_that_do_not_convert_are_errors() {
    assert_eq!(
        err("Service.Port == web"),
        "error getting match value in expression: strconv.ParseInt: parsing \"web\": \
         invalid syntax"
    );
    assert_eq!(
        err("Service.Port == 1.5"),
        "error getting match value in expression: strconv.ParseInt: parsing \"1.5\": \
         invalid syntax"
    );
    assert_eq!(
        err("Service.Port == 99999999999999999999"),
        "error getting match value in expression: strconv.ParseInt: parsing \
         \"99999999999999999999\": value out of range"
    );
    assert_eq!(
        err("Node.ModifyIndex == -1"),
        "error getting match value in expression: strconv.ParseUint: parsing \"-1\": \
         invalid syntax"
    );
    assert_eq!(
        err("Service.EnableTagOverride == yes"),
        "error getting match value in expression: strconv.ParseBool: parsing \"yes\": \
         invalid syntax"
    );
    assert_eq!(
        err("Service.Ratio == half"),
        "error getting match value in expression: strconv.ParseFloat: parsing \"half\": \
         invalid syntax"
    );
    assert_eq!(
        err("Service.Tags == v1"),
        "unable to find suitable primitive comparison function for matching"
    );
}

#[test]
fn in_and_contains() {
    assert!(yes("v1 in Service.Tags"));
    assert!(yes("\"primary\" in Service.Tags"));
    assert!(yes("Service.Tags contains primary"));
    assert!(!yes("Service.Tags contains v2"));
    assert!(yes("Service.Tags not contains v2"));
    assert!(yes("v2 not in Service.Tags"));
    // Maps: key presence.
    assert!(yes("version in Service.Meta"));
    assert!(yes("Service.Meta contains \"foo-bar\""));
    assert!(!yes("baz in Service.Meta"), "values are not keys");
    // Strings: substrings.
    assert!(yes("eb in Service.Service"));
    assert!(yes("Service.Service contains \"\""));
    assert!(!yes("Service.Service contains api"));
    // Arrays convert the literal to each element's type.
    let v = json!({"Ports": [80, 443], "Flags": [true]});
    assert_eq!(eval_on("443 in Ports", &v), Ok(true));
    assert_eq!(eval_on("Flags contains 1", &v), Ok(true));
    assert!(eval_on("x in Ports", &v).is_err());
    assert_eq!(
        err("1 in Service.Port"),
        "cannot perform in/contains operations on type int for selector: \"Service.Port\""
    );
    assert_eq!(
        err("1 in Service.Weights"),
        "cannot perform in/contains operations on type struct for selector: \
         \"Service.Weights\""
    );
}

#[test]
fn emptiness_and_nil() {
    assert!(yes("Service.Address is empty"));
    assert!(yes("Service.Tags is not empty"));
    assert!(yes("Checks.0.ServiceTags is empty"));
    assert!(yes("Service.Meta is not empty"));
    assert!(yes("Node.Meta.empty is empty"));
    assert!(
        yes("Service.Proxy is empty"),
        "null is a nil slice, map or pointer"
    );
    assert!(yes("Service.Proxy is nil"));
    assert!(yes("Service.Tags is not nil"));
    assert_eq!(
        err("Service.Port is empty"),
        "cannot perform is-empty operations on type int for selector: \"Service.Port\""
    );
    assert_eq!(
        err("Service.Weights is empty"),
        "cannot perform is-empty operations on type struct for selector: \
         \"Service.Weights\""
    );
    assert_eq!(
        err("Service.Port is nil"),
        "cannot perform is-nil operations on type int for selector: \"Service.Port\""
    );
}

#[test]
fn regular_expressions() {
    assert!(yes("Service.Service matches \"^w.b$\""));
    assert!(
        yes("Service.Service matches e"),
        "unanchored, as Go's Match"
    );
    assert!(yes("Service.Service not matches \"^api\""));
    assert!(yes("Service.Meta.version matches `^1\\.[0-9]+$`"));
    assert_eq!(
        err("Service.Port matches \"8\""),
        "value of type int is not convertible to []byte"
    );
    let e = err("Service.Service matches \"(\"");
    assert!(
        e.starts_with("failed to compile regular expression \"(\": "),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    // Too large a program is refused, not built.
    let e = err("Service.Service matches \"\\\\w{1000}\\\\w{1000}\\\\w{1000}\"");
    assert!(e.contains("size limit"), "{e}");
}

#[test]
fn missing_map_keys_answer_as_empty() {
    assert!(!yes("Service.Meta.nope == x"));
    assert!(yes("Service.Meta.nope != x"));
    assert!(yes("Service.Meta.nope is empty"));
    assert!(!yes("Service.Meta.nope is not empty"));
    assert!(!yes("x in Service.Meta.nope"));
    assert!(yes("x not in Service.Meta.nope"));
    assert!(!yes("Service.Meta.nope matches \".*\""));
    assert!(yes("Service.Meta.nope not matches \".*\""));
    assert!(yes("Service.Meta.nope is nil"));
    assert!(yes("Node.TaggedAddresses.lan_ipv6 is empty"));
    // A null map is an empty one.
    assert_eq!(
        eval_on("ServiceTaggedAddresses.lan is empty", &catalog()),
        Ok(true)
    );
}

#[test]
fn unknown_fields_are_errors() {
    assert_eq!(
        err("Service.Nope == 1"),
        "error finding value in datum: /Service/Nope at part 1: couldn't find key: struct \
         field with name \"Nope\""
    );
    assert_eq!(
        err("Nope is empty"),
        "error finding value in datum: /Nope at part 0: couldn't find key: struct field \
         with name \"Nope\""
    );
    assert_eq!(
        err("Service.Meta.a.b == 1"),
        "error finding value in datum: /Service/Meta/a/b at part 2: couldn't find key \"a\""
    );
    assert_eq!(
        err("Service.Port.x == 1"),
        "error finding value in datum: /Service/Port/x: at part 2, invalid value kind: int"
    );
    assert_eq!(
        err("Checks.5.Status == passing"),
        "error finding value in datum: /Checks/5/Status at part 1: index 5 is out of range \
         (length = 2)"
    );
    assert_eq!(
        err("Checks.x == passing"),
        "error finding value in datum: /Checks/x at part 1: couldn't convert value \"x\" \
         to type int"
    );
}

#[test]
fn selectors_index_and_pointer_forms() {
    assert!(yes("Service.Meta[\"foo-bar\"] == baz"));
    assert!(yes("Service.Meta[ `foo-bar` ] == baz"));
    assert!(yes("Service[\"Meta\"].version == \"1.2\""));
    assert!(yes("Checks.1.Status == critical"));
    assert!(yes("\"/Service/Meta/foo-bar\" == baz"));
    assert!(yes("\"/Checks/0/Status\" == passing"));
    // A bare word value is a selector's text; a quoted pointer value loses its `/`s' lead,
    // as in bexpr.
    let v = json!({"Path": "a.b", "Slash": "x/y", "Meta": {"k": "z"}});
    assert_eq!(eval_on("Path == a.b", &v), Ok(true));
    assert_eq!(eval_on("Path == a[\"b\"]", &v), Ok(true));
    assert_eq!(eval_on("Slash == \"/x/y\"", &v), Ok(true));
    assert_eq!(eval_on("Slash == x/y", &v), Ok(true));
    assert_eq!(eval_on("Meta.k == z", &v), Ok(true));
}

#[test]
fn strings_unquote_as_go_does() {
    let v = json!({"S": "a\tb\u{e9}\\", "R": "a\\tb"});
    assert_eq!(eval_on(r#"S == "a\tb\u00e9\\""#, &v), Ok(true));
    assert_eq!(eval_on(r#"S == "a\x09b\303\251\\""#, &v), Ok(true));
    assert_eq!(eval_on(r"R == `a\tb`", &v), Ok(true));
    assert_eq!(
        eval_on("R == `a\\t\rb`", &v),
        Ok(true),
        "raw strings drop CRs"
    );
    assert_eq!(
        Filter::parse(r#"S == "a\qb""#).unwrap_err().to_string(),
        "1:6 (5): rule \"string\": invalid syntax"
    );
    // The string ends at the first quote, so an escaped quote cannot be written.
    assert_eq!(
        Filter::parse(r#"S == "a\"b""#).unwrap_err().to_string(),
        "1:6 (5): rule \"string\": invalid syntax"
    );
    assert!(
        Filter::parse("S == \"a\nb\"").is_err(),
        "no newline in a quoted string"
    );
}

#[test]
fn logic_and_precedence() {
    assert!(yes("Service.Service == web and Service.Port == 8080"));
    assert!(!yes("Service.Service == web and Service.Port == 80"));
    assert!(yes("Service.Service == api or Service.Port == 8080"));
    assert!(yes("not Service.Service == api"));
    assert!(yes("not not Service.Service == web"));
    // `not` binds tighter than `and`, `and` than `or`.
    assert!(yes(
        "Service.Service == api and Service.Port == 1 or Service.Port == 8080"
    ));
    assert!(!yes(
        "Service.Service == api and (Service.Port == 1 or Service.Port == 8080)"
    ));
    assert!(yes("not Service.Service == api and Service.Port == 8080"));
    assert!(!yes(
        "not (Service.Service == web and Service.Port == 8080)"
    ));
    // The docs' equivalence: `A and not B or C` is `(A and (not B)) or C`.
    for (a, b, c) in [
        (true, true, false),
        (true, false, false),
        (false, true, true),
    ] {
        let t = |x: bool| {
            if x {
                "Service.Port == 8080"
            } else {
                "Service.Port == 1"
            }
        };
        let plain = format!("{} and not {} or {}", t(a), t(b), t(c));
        let grouped = format!("( {} and (not {} )) or {}", t(a), t(b), t(c));
        assert_eq!(yes(&plain), yes(&grouped), "{plain}");
        assert_eq!(yes(&plain), (a && !b) || c, "{plain}");
    }
    // Short-circuit: the erroring right side is never reached.
    assert!(yes("Service.Port == 8080 or Nope == 1"));
    assert!(!yes("Service.Port == 1 and Nope == 1"));
    assert!(yes("  ( Service.Port == 8080 )  "));
    assert!(yes("(Service.Port == 8080) and\n(Service.Service == web)"));
}

#[test]
fn keywords_are_not_reserved() {
    let v = json!({"not": "x", "and": ["or"], "in": 1});
    assert_eq!(eval_on("not == x", &v), Ok(true));
    assert_eq!(eval_on("or in and", &v), Ok(true));
    assert_eq!(
        eval_on("not in and", &v),
        Ok(false),
        "the word `not`, in `and`"
    );
    assert_eq!(eval_on("in == 1 and not in == 2", &v), Ok(true));
}

#[test]
fn empty_filter_keeps_everything() {
    assert_eq!(eval_on("", &health()), Ok(true));
    assert!(Filter::parse(" ").is_err());
}

#[test]
fn consul_doc_examples() {
    // /v1/catalog/service: ServiceMeta by dot and by index, tags, node meta.
    let c = catalog();
    for src in [
        "ServiceMeta.foo == bar",
        "ServiceMeta[\"foo\"] == bar",
        "NodeMeta.os == linux",
        "ServiceTags contains \"v2\"",
        "\"primary\" in ServiceTags",
        "ServiceMeta.env == qa and ServiceName == \"api-internal\"",
        "ServiceName matches \"^api-\" and ServicePort == 9090",
        "ServiceMeta.version is empty",
        "ServiceEnableTagOverride == true",
    ] {
        assert_eq!(eval_on(src, &c), Ok(true), "{src}");
    }
    // /v1/health/service.
    for src in [
        "Service.Tags contains primary",
        "Service.Meta.version == \"1.2\"",
        "Node.Meta.os == linux and Node.Datacenter == dc1",
        "Checks.0.Status == passing",
        "Node.Node != n2",
    ] {
        assert!(yes(src), "{src}");
    }
}

#[test]
fn syntax_errors_read_as_bexpr_writes_them() {
    let cases = [
        (
            "foo == \"12x",
            "1:12 (11): rule \"string\": Unterminated string literal",
        ),
        (
            "foo == `12x",
            "1:12 (11): rule \"string\": Unterminated string literal",
        ),
        (
            "foo == 3x",
            "1:9 (8): rule \"number\": Invalid number literal",
        ),
        ("foo[3] == abc", "1:5 (4): rule \"index\": Invalid index"),
        (
            "x in foo[\"abc\"",
            "1:15 (14): rule \"index\": Unclosed index expression",
        ),
        (
            "foo[\"abc\" == 3",
            "1:11 (10): rule \"index\": Unclosed index expression",
        ),
        ("x in 32", "1:6 (5): rule \"match\": Invalid selector"),
        (
            "(foo == 4",
            "1:10 (9): rule \"grouping\": Unmatched parentheses",
        ),
        (
            "32 == 32",
            r#"1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]"#,
        ),
        (
            "32 is empty",
            r#"1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]"#,
        ),
        (
            "x in foo abc",
            r#"1:10 (9): no match found, expected: "and", "or", [ \t\r\n] or EOF"#,
        ),
        (
            "x in foo and ",
            concat!(
                r#"1:14 (13): no match found, expected: "(", "-", "0", "\"", "`", "not", "#,
                r#"[ \t\r\n], [1-9] or [a-zA-Z]"#,
            ),
        ),
        (
            "x in foo or ",
            concat!(
                r#"1:13 (12): no match found, expected: "(", "-", "0", "\"", "`", "all", "any", "#,
                r#""not", [ \t\r\n], [1-9] or [a-zA-Z]"#,
            ),
        ),
        (
            "x in foo or not ",
            concat!(
                r#"1:17 (16): no match found, expected: "!=", "(", "-", "0", "==", "\"", "`", "#,
                r#""contains", "in", "is", "matches", "not", [ \t\r\n], [1-9] or [a-zA-Z]"#,
            ),
        ),
    ];
    for (src, want) in cases {
        match Filter::parse(src) {
            Ok(_) => panic!("{src}: parsed"),
            Err(e) => assert_eq!(e.to_string(), want, "{src}"),
        }
    }
    // Lines and columns after a newline.
    assert_eq!(
        Filter::parse("a == 1\nand b ==").unwrap_err().to_string(),
        "2:9 (15): no match found, expected: \"-\", \"0\", \"\\\"\", \"`\", \
         [ \\t\\r\\n], [1-9] or [a-zA-Z]"
    );
}

#[test]
fn bounds() {
    let long = format!("a == \"{}\"", "x".repeat(FILTER_BYTES_MAX));
    assert_eq!(
        Filter::parse(&long).unwrap_err(),
        FilterError::TooLong(long.len())
    );
    let nest = |n: usize| format!("{}a == 1{}", "(".repeat(n), ")".repeat(n));
    assert!(Filter::parse(&nest(FILTER_DEPTH_MAX)).is_ok());
    assert_eq!(
        Filter::parse(&nest(FILTER_DEPTH_MAX + 1)).unwrap_err(),
        FilterError::TooDeep
    );
    let nots = |n: usize| format!("{}a == 1", "not ".repeat(n));
    assert!(Filter::parse(&nots(FILTER_DEPTH_MAX)).is_ok());
    assert_eq!(
        Filter::parse(&nots(FILTER_DEPTH_MAX + 1)).unwrap_err(),
        FilterError::TooDeep
    );
    // Deep nesting and long chains at the byte bound parse without deep recursion.
    let open = "(".repeat(FILTER_BYTES_MAX);
    assert_eq!(Filter::parse(&open).unwrap_err(), FilterError::TooDeep);
    let chain = vec!["a == 1"; FILTER_BYTES_MAX / 12].join(" or ");
    assert!(Filter::parse(&chain).is_ok());
    assert_eq!(
        Filter::parse("any Service.Tags as t { t == v1 }").unwrap_err(),
        FilterError::Unsupported
    );
}

// ---------------------------------------------------------------------------------------
// Properties.

/// A match expression over the health entry's fields, well-formed or nearly so.
fn leaf() -> impl Strategy<Value = String> {
    let sel = prop::sample::select(vec![
        "Service.Service",
        "Service.Tags",
        "Service.Port",
        "Service.Meta.version",
        "Service.Meta[\"foo-bar\"]",
        "Service.Meta.nope",
        "Service.EnableTagOverride",
        "Service.Proxy",
        "Node.Meta",
        "Checks.0.Status",
        "Checks",
        "Nope",
    ]);
    let val = prop::sample::select(vec![
        "web",
        "\"v1\"",
        "`primary`",
        "8080",
        "-1",
        "0.5",
        "true",
        "\"1.2\"",
        "baz",
        "\"\"",
        "\"^w\"",
        "version",
    ]);
    let op = prop::sample::select(vec![
        "==",
        "!=",
        "contains",
        "not contains",
        "matches",
        "not matches",
    ]);
    let unary = prop::sample::select(vec!["is empty", "is not empty", "is nil", "is not nil"]);
    prop_oneof![
        (sel.clone(), op, val.clone()).prop_map(|(s, o, v)| format!("{s} {o} {v}")),
        (sel.clone(), unary).prop_map(|(s, u)| format!("{s} {u}")),
        (val, prop::bool::ANY, sel)
            .prop_map(|(v, not, s)| { format!("{v} {}in {s}", if not { "not " } else { "" }) }),
    ]
}

/// Expressions of leaves joined by `and`, `or`, `not` and parentheses.
fn expression() -> impl Strategy<Value = String> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

/// Health entries varying in the fields the leaves read.
fn datum() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["web", "api", ""]),
        prop::collection::vec(prop::sample::select(vec!["v1", "primary", "x"]), 0..3),
        prop_oneof![
            Just(json!(8080)),
            Just(json!(-1)),
            Just(json!(0.5)),
            Just(json!("80"))
        ],
        prop::option::of(prop::sample::select(vec!["1.2", "baz", ""])),
        prop::bool::ANY,
    )
        .prop_map(|(name, tags, port, version, proxy)| {
            let mut v = health();
            v["Service"]["Service"] = json!(name);
            v["Service"]["Tags"] = json!(tags);
            v["Service"]["Port"] = port;
            match version {
                Some(s) => v["Service"]["Meta"]["version"] = json!(s),
                None => {
                    if let Some(m) = v["Service"]["Meta"].as_object_mut() {
                        m.remove("version");
                    }
                }
            }
            if proxy {
                v["Service"]["Proxy"] = json!({"Config": {}});
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics(src in any::<String>()) {
        let _ = Filter::parse(&src);
    }

    #[test]
    fn parse_never_panics_on_near_grammar(
        parts in prop::collection::vec(prop::sample::select(vec![
            "a", "Service.Meta", "[", "]", "\"", "`", "(", ")", " ", "==", "!=", "in", "not",
            "is", "empty", "nil", "and", "or", "contains", "matches", "-", "0", "1.5", "3x",
            ".", "\"/x/y\"", "\\", "\n", "any", "é",
        ]), 0..40)
    ) {
        let src: String = parts.concat();
        if let Err(e) = Filter::parse(&src) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn not_is_negation(src in expression(), v in datum()) {
        let f = Filter::parse(&src);
        prop_assume!(f.is_ok());
        let got = f.unwrap().matches(&v);
        let neg = Filter::parse(&format!("not ({src})")).map_err(|e| format!("{src}: {e}"));
        prop_assert!(neg.is_ok(), "{:?}", neg.err());
        let neg = neg.unwrap().matches(&v);
        prop_assert_eq!(neg, got.map(|b| !b), "{}", src);
    }
}

#[test]
fn bexprs_own_grammar_cases_parse() {
    for src in [
        "foo == 3",
        "\"/foo\" == 3",
        "\"/hy-phen/under_score/pi|pe/do.t/ti~lde/co:lon\" == 3",
        "foo/bar == 3",
        "list is not empty",
        "bar not contains foo",
        "foo not matches bar",
        "not prod in tags",
        "port != 80 and port != 8080",
        "`foo` not in bar",
        "x in foo and not str == something or list is empty",
        "x in foo and not (str == something or list is empty)",
        "\t\r\n  foo \t\r\n not \t\r\n in \t\r\n x \t\r\n",
        "\t\r\n  foo \t\r\n is \t\r\n not \t\r\n empty \t\r\n",
        "\t\r\n not \t\r\n  foo \t\r\n in \t\r\n x \t\r\n",
        "\t\r\n foo \t\r\n == \t\r\n x \t\r\n or \t\r\n y \t\r\n is \t\r\n empty \t\r\n",
        "\t\r\n ( \t\r\n foo \t\r\n == \t\r\n x \t\r\n ) \t\r\n",
        "`environment` in foo.bar[\"meta\"].tags[\t`ENV` ]",
        "environment in \"/hy-phen/under_score/pi|pe/do.t/ti~lde\"",
        "environment in foo[\"bar\"][\"meta\"][\"tags\"][\"ENV\"]",
        "environment in foo[\"abc-def ghi åß∂ƒ\"]",
        "foo == -0.2",
        "not not foo == 3",
        "(((foo == 3) and (not ((bar in baz) and (not (one != two))))) or (((next is empty) \
         and (not (foo is not empty))) and (bar not in foo)))",
    ] {
        if let Err(e) = Filter::parse(src) {
            panic!("{src}: {e}");
        }
    }
    // `not prod in tags` is `not ("prod" in tags)`.
    let v = json!({"tags": ["prod"]});
    assert_eq!(eval_on("not prod in tags", &v), Ok(false));
    // The selector parts of an index chain.
    let v = json!({"foo": {"bar": {"meta": {"tags": {"ENV": "environment"}}}}});
    assert_eq!(
        eval_on("environment in foo[\"bar\"].meta[\"tags\"].ENV", &v),
        Ok(true)
    );
    assert_eq!(
        Filter::parse("\"/hy-phen/under_score/pi|pe/do.t/ti~lde/\" == 3")
            .unwrap_err()
            .to_string(),
        r#"1:43 (42): no match found, expected: "in", "not" or [ \t\r\n]"#
    );
}
