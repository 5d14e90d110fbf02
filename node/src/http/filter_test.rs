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
    // Collection bodies nest as parentheses do.
    let bodies = |n: usize| {
        let open = "any Checks as c { ".repeat(n);
        format!("{open}c == 1{}", " }".repeat(n))
    };
    assert!(Filter::parse(&bodies(FILTER_DEPTH_MAX)).is_ok());
    assert_eq!(
        Filter::parse(&bodies(FILTER_DEPTH_MAX + 1)).unwrap_err(),
        FilterError::TooDeep
    );
    // Nested collections multiply: bounded per element, not left to run.
    let wide = json!({"L": (0..64).collect::<Vec<u32>>()});
    let three = "all L as a { all L as b { all L as c { c != 99 } } }";
    assert_eq!(eval_on(three, &wide), Err(FilterError::TooCostly));
    let two = "all L as a { all L as b { b != 99 } }";
    assert_eq!(eval_on(two, &wide), Ok(true), "64 * 64 * 2 steps fit");
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

/// A match on a name a collection expression binds (an error outside one).
fn bound_leaf() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "t == v1",
        "t != primary",
        "t matches \"^p\"",
        "i == 1",
        "k == version",
        "v == \"1.2\"",
        "c.Status == passing",
        "c.ServiceTags is empty",
        "t.x == 1",
    ])
    .prop_map(str::to_string)
}

/// A collection expression around `body`, over the entry's lists and maps.
fn collection(body: String) -> impl Strategy<Value = String> {
    let head = prop::sample::select(vec![
        "any Service.Tags as t",
        "all Service.Tags as i, t",
        "any Service.Meta as k",
        "all Service.Meta as k, v",
        "any Service.Meta as _, v",
        "all Checks as c",
        "any Checks as i, _",
        "all Service.Meta.nope as t",
        "any Service.Port as t",
    ]);
    head.prop_map(move |h| format!("({h} {{ {body} }})"))
}

/// Expressions of leaves joined by `and`, `or`, `not`, parentheses and collection
/// expressions.
fn expression() -> impl Strategy<Value = String> {
    prop_oneof![3 => leaf(), 1 => bound_leaf()].prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.prop_flat_map(collection),
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
            ".", "\"/x/y\"", "\\", "\n", "any", "é", "all", "as", "{", "}", ",", "_", "x",
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

    /// `any X as x { e }` is `not (all X as x { not (e) })`, errors included.
    #[test]
    fn any_is_not_all_not(src in expression(), v in datum(), over in prop::sample::select(vec![
        "Service.Tags as i, t", "Service.Meta as k, v", "Checks as c", "Service.Proxy as t",
    ])) {
        let any = Filter::parse(&format!("any {over} {{ {src} }}"));
        prop_assume!(any.is_ok());
        let all = Filter::parse(&format!("not (all {over} {{ not ({src}) }})"));
        prop_assert!(all.is_ok(), "{:?}", all.err());
        prop_assert_eq!(any.unwrap().matches(&v), all.unwrap().matches(&v), "{}", src);
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

#[test]
fn any_and_all_over_lists_and_maps() {
    // Lists: the name is the element.
    assert!(yes("any Checks as c { c.Status == critical }"));
    assert!(!yes("all Checks as c { c.Status == passing }"));
    assert!(yes("all Checks as c { c.Status != warning }"));
    assert!(yes("any Service.Tags as t { t == primary }"));
    assert!(yes("any Service.Tags as i, t { i == 1 and t == primary }"));
    assert!(yes("all Service.Tags as i, _ { i != 2 }"));
    assert!(yes("any Service.Tags as _, t { t == v1 }"));
    assert!(yes("any Checks as c { \"/c/CheckID\" == serfHealth }"));
    // Maps: the name alone is the key; the value needs `k, v` or `_, v`.
    assert!(yes("any Service.Meta as k { k == version }"));
    assert!(!yes("any Service.Meta as k { k == \"1.2\" }"));
    assert!(yes(
        "any Service.Meta as k, v { k == version and v == \"1.2\" }"
    ));
    assert!(yes("any Service.Meta as _, v { v == baz }"));
    assert!(!yes("all Service.Meta as k, _ { k != \"foo-bar\" }"));
    // Nested, through the outer name; an inner name shadows an outer one.
    assert!(yes(
        "any Checks as c { any c.ServiceTags as t { t == v1 } }"
    ));
    assert!(yes(
        "any Checks as c { any c.ServiceTags as c { c == v1 } }"
    ));
    assert!(!yes(
        "all Checks as c { any c.ServiceTags as t { t == v1 } }"
    ));
    // A name shadows a field of the datum; values are text, never names.
    assert!(yes("any Service.Tags as Service { Service == v1 }"));
    assert!(yes("any Service.Tags as v1 { v1 == v1 }"));
    assert!(!yes("any Service.Tags as t { Service.Service == t }"));
    // Nothing to visit: a missing map key, an empty or a null list or map.
    assert!(!yes("any Service.Meta.nope as x { x == 1 }"));
    assert!(yes("all Service.Meta.nope as x { x == 1 }"));
    assert!(
        yes("all Checks.0.ServiceTags as t, t { t == 1 }"),
        "no member, no error"
    );
    let c = catalog();
    assert_eq!(
        eval_on("all ServiceTaggedAddresses as k { k == x }", &c),
        Ok(true)
    );
    assert_eq!(
        eval_on("any ServiceTaggedAddresses as k { k == x }", &c),
        Ok(false)
    );
    // Where the grammar puts them: last in an `or` chain, in parentheses elsewhere.
    assert!(yes(
        "Service.Port == 1 or any Service.Tags as t { t == v1 }"
    ));
    assert!(yes(
        "(any Service.Tags as t { t == v1 }) and Service.Port == 8080"
    ));
    assert!(!yes("not (any Service.Tags as t { t == v1 })"));
    assert!(yes("(all Service.Tags as t { t != v9 })"));
    for src in [
        "any Service.Tags as t { t == v1 } or Service.Port == 1",
        "Service.Port == 8080 and any Service.Tags as t { t == v1 }",
        "not any Service.Tags as t { t == v1 }",
    ] {
        assert!(Filter::parse(src).is_err(), "{src}");
    }
    // A number must be followed by a space, the end or `)`, even before a `}`.
    assert!(yes("any Service.Tags as t { t == v1}"));
    assert_eq!(
        Filter::parse("any Service.Tags as t { t == 1}")
            .unwrap_err()
            .to_string(),
        "1:31 (30): rule \"number\": Invalid number literal"
    );
}

#[test]
fn collection_errors_read_as_bexprs() {
    let cases = [
        (
            "any Service.Port as p { p == 1 }",
            "Service.Port is not a list or a map",
        ),
        (
            "all Service.Weights as w { w == 1 }",
            "Service.Weights is not a list or a map",
        ),
        (
            "any Service.Tags as t { any t as x { x == 1 } }",
            "t is not a list or a map",
        ),
        (
            "all Service.Meta as k, k { Service.Port == 1 }",
            "\"k\" cannot be used as a placeholder for both the index and the value",
        ),
        (
            "any Service.Meta as k { k.Color == red }",
            "/k references a string so /k/Color is invalid",
        ),
        (
            "any Service.Tags as i, _ { i.Color == red }",
            "/i references a int so /i/Color is invalid",
        ),
        (
            "any Checks as c { c.Nope == 1 }",
            "error finding value in datum: /Checks/0/Nope at part 2: couldn't find key: \
             struct field with name \"Nope\"",
        ),
        // The name is bound in the body only.
        (
            "(any Service.Tags as t { t == v1 }) and t == 1",
            "error finding value in datum: /t at part 0: couldn't find key: struct field \
             with name \"t\"",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(err(src), want, "{src}");
    }
}

/// bexpr's own evaluation cases for `any` and `all`, on its test datum (its `Map` renamed
/// `Meta`, which is a map here by name).
#[test]
fn bexprs_own_collection_cases() {
    let v = json!({
        "Nested": {
            "Meta": {"foo": "bar", "bar": "baz", "abc": "123", "colon": "co:lon",
                     "co:lon": "co:lon", "email": "foo@example.com"},
            "SliceOfInts": [1, 3, 5, 7, 9],
            "SliceOfStructs": [{"X": 1, "Y": 2}, {"X": 3, "Y": 5}]
        },
        "TopInt": 5
    });
    let cases: &[(&str, Result<bool, &str>)] = &[
        ("all Nested.SliceOfInts as i { i != 42 }", Ok(true)),
        ("all Nested.SliceOfInts as i { i == 1 }", Ok(false)),
        ("all Nested.Meta as v { v == \"bar\" }", Ok(false)),
        ("all Nested.Meta as v { v != \"hello\" }", Ok(true)),
        (
            "all Nested.Meta as k, k { TopInt == 5 }",
            Err("\"k\" cannot be used as a placeholder for both the index and the value"),
        ),
        ("all Nested.Meta as k, _ { k != \"foo\" }", Ok(false)),
        ("all Nested.Meta as k, _ { k != \"hello\" }", Ok(true)),
        (
            "all Nested.Meta as k, v { k != \"foo\" or v != \"baz\" }",
            Ok(true),
        ),
        (
            "all TopInt as k, v { k != \"foo\" or v != \"baz\" }",
            Err("TopInt is not a list or a map"),
        ),
        ("any Nested.SliceOfInts as i { i == 1 }", Ok(true)),
        ("any Nested.SliceOfInts as i { i == 42 }", Ok(false)),
        ("any Nested.SliceOfStructs as i { \"/i/X\" == 1 }", Ok(true)),
        ("any Nested.Meta as k { k != \"bar\" }", Ok(true)),
        ("any Nested.Meta as k { k == \"bar\" }", Ok(true)),
        ("any Nested.Meta as k { k == \"hello\" }", Ok(false)),
        (
            "any Nested.Meta as k, v { k == \"foo\" and v == \"bar\" }",
            Ok(true),
        ),
        (
            "any Nested.Meta as k { k.Color == \"red\" }",
            Err("/k references a string so /k/Color is invalid"),
        ),
        (
            "any Nested.SliceOfInts as i, _ { i.Color == \"red\" }",
            Err("/i references a int so /i/Color is invalid"),
        ),
    ];
    for (src, want) in cases {
        let got = eval_on(src, &v).map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{src}");
    }
}

#[test]
fn bexprs_own_collection_grammar_cases() {
    for src in [
        "all group.tasks as t { t.name == \"hello\" }",
        "all group.tasks as t { all t.test as i { i == \"test\" }}",
        "all group.tasks as k, v { k == v }",
        "any group.tasks as t { t.name == \"vmware\" }",
        "any group.tasks as t { any t.test as t { t == \"test\" }}",
        "any \"/group/tasks\" as i , _ { i == 1 }",
        "all x as _,v{v == 1 }",
    ] {
        if let Err(e) = Filter::parse(src) {
            panic!("{src}: {e}");
        }
    }
    let cases = [
        (
            "all group.tasks as { t.name == \"hello\" }",
            r#"1:20 (19): no match found, expected: "_", [ \t\r\n] or [a-zA-Z]"#,
        ),
        (
            "all as t { t.name == \"hello\" }",
            r#"1:8 (7): no match found, expected: "as" or [ \t\r\n]"#,
        ),
    ];
    for (src, want) in cases {
        match Filter::parse(src) {
            Ok(_) => panic!("{src}: parsed"),
            Err(e) => assert_eq!(e.to_string(), want, "{src}"),
        }
    }
}
