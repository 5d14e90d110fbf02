//! Consul's `?filter` expressions (HashiCorp's go-bexpr language), evaluated against the JSON
//! of one list element, e.g. a `/v1/health/service` entry or a `/v1/catalog/service` node.
//!
//! The parser follows bexpr's PEG grammar alternative by alternative, but factored so that
//! no input is parsed twice at a level (bexpr's generated parser backtracks and re-parses):
//! it stays linear and its recursion is bounded by [`FILTER_DEPTH_MAX`]. Like bexpr's parser
//! it remembers the farthest position where a token was wanted and what was wanted there, so
//! a syntax error reads as bexpr's does (`1:4 (3): no match found, expected: "in", "not" or
//! [ \t\r\n]`); the grammar's own errors (`rule "number": Invalid number literal`, ...) are
//! kept, deduplicated and joined by newlines, and win over the farthest-position message.
//!
//! Supported: `==`, `!=`, `is empty`, `is not empty`, `is nil`, `is not nil`, `in`,
//! `not in`, `contains`, `not contains`, `matches`, `not matches`; `and`, `or`, `not` and
//! parentheses (`not` binds tightest, then `and`, then `or`); dotted selectors with `.N`
//! array indexes and `["key"]` map indexes, and quoted JSON-pointer selectors (`"/a/b"`);
//! values as double-quoted strings (Go escapes), backtick raw strings, numbers and bare
//! words (a bare word is a selector spelled as a value: its text is the value); and
//! bexpr's collection expressions (since its 0.1.13), `any Checks as c { c.Status ==
//! critical }` and `all Service.Meta as k, v { v != "" }`, which bind for their body each
//! member's index or key and value (`as x`: a list's element or a map's key; `as i, v`;
//! `as i, _`; `as _, v`). As in bexpr's grammar, a collection expression is an `or`
//! chain's last term, and an operand of `and` or `not` only in parentheses.
//!
//! Evaluation follows bexpr on Go structs, with JSON standing in for them:
//! - a literal is text until a field's type asks for more: strings compare as bytes, a
//!   number field converts the literal as Go's `strconv` does for the field's kind (an
//!   integral JSON number is an `int64`, one past `i64::MAX` a `uint64`, others `float64`),
//!   a bool field with `strconv.ParseBool`; a literal that does not convert is an error;
//! - `in`/`contains` on an array test membership (each element converting the literal as
//!   its own type), on a map test key presence, on a string test for a substring;
//! - `null` stands for Go's nil slices, maps and pointers: empty, holding nothing, nil;
//! - which JSON objects are Go maps cannot be seen in the JSON, so the rule is by name:
//!   an object under a key in [`MAP_FIELDS`] is a map, and so is an object inside a map;
//!   every other object is a struct. A key missing from a map, as the selector's last step,
//!   answers as bexpr answers a missing map key (nothing equals or is in it, it is empty);
//!   a key missing from a struct, or earlier in the path, is an error, as a field that a
//!   Go struct lacks is in Consul;
//! - a name bound by a collection expression stands, as a selector's first part, for the
//!   path to its member (resolved through the names further out) or for its index or key
//!   (which has no parts below it); values are never names, only text. A key missing from a
//!   map and `null` have no members: `any` is false over them, `all` true; a struct or a
//!   primitive is an error.
//!
//! Evaluation is bounded as bexpr's is not: each element may take at most
//! [`FILTER_STEPS_MAX`] steps (matches and collection members), so nested collections over
//! large lists fail rather than run for long.
//!
//! Regular expressions are compiled when the filter is parsed (bexpr compiles them at their
//! first evaluation), with [`REGEX_SIZE_MAX`] as the compiled program's bound; their syntax
//! is the `regex` crate's, which is RE2's as Go's is, give or take a few classes.

use std::borrow::Cow;
use tribune_core::local::alias::go_quote;

use regex::Regex;
use serde_json::Value;

/// The longest expression parsed, in bytes; a longer one is refused before parsing.
pub const FILTER_BYTES_MAX: usize = 4096;
/// How deeply `not`s, parentheses and collection bodies may nest.
pub const FILTER_DEPTH_MAX: usize = 32;
/// The steps one element's evaluation may take: each match evaluated, and each member a
/// collection expression visits (nested ones multiply).
pub const FILTER_STEPS_MAX: usize = 65_536;
/// The bound on one compiled regular expression (`regex::RegexBuilder::size_limit`).
pub const REGEX_SIZE_MAX: usize = 256 * 1024;
/// Keys whose object values are Go maps in Consul's structs (`Meta`, `NodeMeta`,
/// `TaggedAddresses`, a proxy's `Config`, an HTTP check's `Header`, ...).
pub const MAP_FIELDS: &[&str] = &[
    "Meta",
    "NodeMeta",
    "ServiceMeta",
    "TaggedAddresses",
    "ServiceTaggedAddresses",
    "Config",
    "Header",
];

/// Why a filter could not be parsed or evaluated. The texts are bexpr's (what Consul puts
/// after `Failed to create boolean expression evaluator: `), except for the bounds, which
/// bexpr does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The grammar's error, positioned as bexpr positions it (`line:column (offset)`).
    #[error("{0}")]
    Syntax(String),
    /// The expression is longer than [`FILTER_BYTES_MAX`].
    #[error(
        "filter expression is {0} bytes long, longer than the {max} allowed",
        max = FILTER_BYTES_MAX
    )]
    TooLong(usize),
    /// `not`s, parentheses and collection bodies nest deeper than [`FILTER_DEPTH_MAX`].
    #[error("filter expression nests deeper than {max} levels", max = FILTER_DEPTH_MAX)]
    TooDeep,
    /// A `matches` operand is no regular expression, or compiles too large.
    #[error("failed to compile regular expression {}: {reason}", go_quote(.pattern.as_bytes()))]
    Regex { pattern: String, reason: String },
    /// One element took more than [`FILTER_STEPS_MAX`] steps (nested `any`/`all` over
    /// large collections).
    #[error(
        "filter expression takes more than {max} steps on one element",
        max = FILTER_STEPS_MAX
    )]
    TooCostly,
    /// Evaluation failed: a selector that names nothing, a literal of the wrong type, an
    /// operator the value does not take.
    #[error("{0}")]
    Eval(String),
}

/// A parsed filter. The empty expression is a filter that keeps everything, as bexpr's
/// `CreateFilter("")` is.
#[derive(Debug, Clone)]
pub struct Filter {
    expr: Option<Expr>,
}

impl Filter {
    /// Parses `src`, refusing it past [`FILTER_BYTES_MAX`] bytes or [`FILTER_DEPTH_MAX`]
    /// levels; compiles its regular expressions.
    pub fn parse(src: &str) -> Result<Filter, FilterError> {
        if src.is_empty() {
            return Ok(Filter { expr: None });
        }
        if src.len() > FILTER_BYTES_MAX {
            return Err(FilterError::TooLong(src.len()));
        }
        Parser::new(src)
            .input()
            .map(|expr| Filter { expr: Some(expr) })
    }

    /// Whether `v` passes the filter, or why it cannot be told.
    pub fn matches(&self, v: &Value) -> Result<bool, FilterError> {
        match &self.expr {
            None => Ok(true),
            Some(e) => e.eval(v, &mut Scope::default()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The syntax tree.

#[derive(Debug, Clone)]
enum Expr {
    /// Alternatives, tried left to right until one holds.
    Or(Vec<Expr>),
    /// Conjuncts, tried left to right until one fails.
    And(Vec<Expr>),
    Not(Box<Expr>),
    Match(Box<Match>),
    Collection(Box<Collection>),
}

/// `any`/`all` over a list's elements or a map's entries, with names bound for the body.
#[derive(Debug, Clone)]
struct Collection {
    all: bool,
    selector: Selector,
    binding: Binding,
    inner: Expr,
}

/// The names a collection expression binds: each member's index (a list's position, a
/// map's key) or value (the member itself, a path into the datum).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// `as x`: a list's element, or a map's key.
    Default(String),
    /// `as i, _`.
    Index(String),
    /// `as _, v`.
    Value(String),
    /// `as i, v`.
    IndexValue(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Matches,
    NotMatches,
    IsNil,
    IsNotNil,
}

impl Op {
    /// The answer for a key missing from a map (bexpr's `NotPresentDisposition`): nothing
    /// equals, is in or matches a missing key, and it is empty and nil.
    fn missing(self) -> bool {
        matches!(
            self,
            Op::NotEqual | Op::NotIn | Op::IsEmpty | Op::NotMatches | Op::IsNil
        )
    }
}

/// A selector: its path, and whether it was written as a JSON pointer (which only changes
/// how it reads as a value: bexpr joins a pointer's parts with `/`, a dotted path's with
/// `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    pointer: bool,
}

impl Selector {
    /// The selector as bexpr prints it in messages and as a bare-word value.
    fn text(&self) -> String {
        self.path.join(if self.pointer { "/" } else { "." })
    }
}

#[derive(Debug, Clone)]
struct Match {
    selector: Selector,
    op: Op,
    /// The operand as written (after unquoting); none for `is empty` and `is nil`.
    value: Vec<u8>,
    /// The compiled operand of `matches` and `not matches`, once parsing is done.
    regex: Option<Regex>,
}

// ---------------------------------------------------------------------------------------
// The parser.

/// One step of a fixed token sequence (`_ "not" _ "in" _`).
#[derive(Clone, Copy)]
enum Tok {
    /// bexpr's `_`: one or more of space, tab, CR, LF.
    Ws,
    /// `_?`.
    WsOpt,
    Lit(&'static str),
}

const WS_CLASS: &str = "[ \\t\\r\\n]";

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Inside a `!` predicate, where bexpr's parser records successes as what was not
    /// wanted.
    invert: bool,
    /// The farthest position where something was wanted, and the wants recorded there.
    fail_pos: usize,
    expected: Vec<String>,
    /// The grammar's own errors, as bexpr words them, in order and without repeats.
    errors: Vec<String>,
    depth: usize,
    /// An error that ends the parse at once (the depth bound, unsupported syntax).
    fatal: Option<FilterError>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            invert: false,
            fail_pos: 0,
            expected: Vec::new(),
            errors: Vec::new(),
            depth: 0,
            fatal: None,
        }
    }

    /// bexpr's `Input`: `_? OrExpression _? EOF`. (Its first alternative, a parenthesized
    /// whole, parses to the same tree and records nothing the second does not.)
    fn input(mut self) -> Result<Expr, FilterError> {
        self.ws_opt();
        let expr = self.or_expr();
        let complete = expr.is_some() && {
            self.ws_opt();
            self.eof()
        };
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        if !self.errors.is_empty() {
            return Err(FilterError::Syntax(self.errors.join("\n")));
        }
        match expr {
            Some(mut e) if complete => {
                e.compile()?;
                Ok(e)
            }
            _ => Err(FilterError::Syntax(self.no_match())),
        }
    }

    /// bexpr's message for a parse that failed without a grammar error.
    fn no_match(&self) -> String {
        let mut wants: Vec<&str> = Vec::new();
        let mut eof = false;
        for w in &self.expected {
            if w == "!." {
                eof = true;
            } else if !wants.contains(&w.as_str()) {
                wants.push(w);
            }
        }
        wants.sort_unstable();
        if eof {
            wants.push("EOF");
        }
        let list = match wants.split_last() {
            None => String::new(),
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        };
        format!(
            "{}: no match found, expected: {list}",
            self.position(self.fail_pos)
        )
    }

    /// `line:column (offset)` as bexpr's parser counts them: columns in characters from 1,
    /// offsets in bytes, and a newline itself at column 0 of the line it starts.
    fn position(&self, offset: usize) -> String {
        let (mut line, mut col) = (1, 0);
        for (i, c) in self.src.char_indices() {
            if i > offset {
                break;
            }
            col += 1;
            if c == '\n' {
                line += 1;
                col = 0;
            }
        }
        if offset >= self.src.len() {
            col += 1;
        }
        format!("{line}:{col} ({offset})")
    }

    // -- recording ------------------------------------------------------------------------

    /// Notes that `want` was tried at `at` (bexpr's `failAt`): a failure outside a `!`
    /// predicate, or a success inside one, counts if it is as far as the farthest yet.
    fn record(&mut self, success: bool, at: usize, want: &dyn Fn() -> String) {
        if success != self.invert || at < self.fail_pos {
            return;
        }
        if at > self.fail_pos {
            self.fail_pos = at;
            self.expected.clear();
        }
        let w = want();
        self.expected
            .push(if self.invert { format!("!{w}") } else { w });
    }

    /// Adds a grammar error of rule `rule` at `at`, unless the same one is there already.
    fn error(&mut self, at: usize, rule: &str, msg: &str) {
        let e = format!("{}: rule \"{rule}\": {msg}", self.position(at));
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    /// Runs `f` as the operand of a `!` predicate: positions restored, wants inverted.
    fn not_pred<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> bool {
        let start = self.pos;
        self.invert = !self.invert;
        let matched = f(self).is_some();
        self.invert = !self.invert;
        self.pos = start;
        !matched
    }

    // -- terminals ------------------------------------------------------------------------

    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    /// The literal `s`, recorded as Go quotes it.
    fn lit(&mut self, s: &'static str) -> bool {
        let at = self.pos;
        let ok = self.src.get(at..).is_some_and(|rest| rest.starts_with(s));
        self.record(ok, at, &|| format!("{s:?}"));
        if ok {
            self.pos += s.len();
        }
        ok
    }

    /// One character of the class `name` (as the grammar writes it), if `pred` takes it.
    fn class(&mut self, name: &'static str, pred: fn(char) -> bool) -> bool {
        let at = self.pos;
        let c = self.peek().filter(|&c| pred(c));
        self.record(c.is_some(), at, &|| name.to_string());
        if let Some(c) = c {
            self.pos += c.len_utf8();
        }
        c.is_some()
    }

    /// `[class]+`.
    fn class_plus(&mut self, name: &'static str, pred: fn(char) -> bool) -> bool {
        if !self.class(name, pred) {
            return false;
        }
        while self.class(name, pred) {}
        true
    }

    fn ws(&mut self) -> bool {
        self.class_plus(WS_CLASS, is_ws)
    }

    fn ws_opt(&mut self) {
        self.ws();
    }

    /// bexpr's `EOF`, `!.`: wanted where a character is.
    fn eof(&mut self) -> bool {
        let at = self.pos;
        let more = at < self.src.len();
        if more {
            // `.` matches inside the `!`: a success there is recorded as `!.`.
            self.invert = !self.invert;
            self.record(true, at, &|| ".".to_string());
            self.invert = !self.invert;
        }
        !more
    }

    /// A token sequence, all or nothing.
    fn seq(&mut self, toks: &[Tok]) -> bool {
        let start = self.pos;
        for t in toks {
            let ok = match *t {
                Tok::Ws => self.ws(),
                Tok::WsOpt => {
                    self.ws_opt();
                    true
                }
                Tok::Lit(s) => self.lit(s),
            };
            if !ok {
                self.pos = start;
                return false;
            }
        }
        true
    }

    /// The first of `ops` whose token sequence matches here.
    fn ops(&mut self, ops: &[(&[Tok], Op)]) -> Option<Op> {
        ops.iter()
            .find(|(toks, _)| self.seq(toks))
            .map(|(_, op)| *op)
    }

    /// Enters one level of `not` or parentheses, or ends the parse past the bound.
    fn enter(&mut self) -> bool {
        self.depth += 1;
        if self.depth > FILTER_DEPTH_MAX {
            self.fatal = Some(FilterError::TooDeep);
        }
        self.fatal.is_none()
    }

    // -- expressions ----------------------------------------------------------------------

    /// `OrExpression`: `AndExpression (_ "or" _ OrExpression)?`, or a collection
    /// expression. The right recursion is parsed as a loop; the tree is n-ary. A collection
    /// expression is the grammar's last alternative, with nothing after it: it may end an
    /// `or` chain, and is an operand of `and` or `not` only in parentheses.
    fn or_expr(&mut self) -> Option<Expr> {
        let start = self.pos;
        let Some(first) = self.and_expr() else {
            self.pos = start;
            return self.collection();
        };
        let mut terms = vec![first];
        loop {
            let save = self.pos;
            if self.seq(&[Tok::Ws, Tok::Lit("or"), Tok::Ws]) {
                let right = self.pos;
                if let Some(e) = self.and_expr() {
                    terms.push(e);
                    continue;
                }
                self.pos = right;
                if let Some(e) = self.collection() {
                    terms.push(e);
                    break;
                }
            }
            self.pos = save;
            break;
        }
        if self.fatal.is_some() {
            return None;
        }
        Some(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    /// `AndExpression`: `NotExpression (_ "and" _ AndExpression)?`, as a loop.
    fn and_expr(&mut self) -> Option<Expr> {
        let mut terms = vec![self.not_expr()?];
        loop {
            let save = self.pos;
            if self.seq(&[Tok::Ws, Tok::Lit("and"), Tok::Ws]) {
                if let Some(e) = self.not_expr() {
                    terms.push(e);
                    continue;
                }
            }
            self.pos = save;
            break;
        }
        if self.fatal.is_some() {
            return None;
        }
        Some(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    /// `CollectionExpression`: `("any" / "all") _ Selector _ "as" _ CollectionIdentifiers
    /// _? "{" _? OrExpression _? "}"`; its body is one level of nesting. The position is
    /// restored where it does not match.
    fn collection(&mut self) -> Option<Expr> {
        if self.fatal.is_some() {
            return None;
        }
        let start = self.pos;
        let c = self.collection_at();
        if c.is_none() {
            self.pos = start;
        }
        c.map(|c| Expr::Collection(Box::new(c)))
    }

    fn collection_at(&mut self) -> Option<Collection> {
        let all = if self.seq(&[Tok::Lit("any"), Tok::Ws]) {
            false
        } else if self.seq(&[Tok::Lit("all"), Tok::Ws]) {
            true
        } else {
            return None;
        };
        let selector = self.selector()?;
        if !self.seq(&[Tok::Ws, Tok::Lit("as"), Tok::Ws]) {
            return None;
        }
        let binding = self.binding()?;
        self.ws_opt();
        if !self.lit("{") || !self.enter() {
            return None;
        }
        self.ws_opt();
        let inner = self.or_expr();
        self.depth -= 1;
        let inner = inner?;
        self.ws_opt();
        if !self.lit("}") {
            return None;
        }
        Some(Collection {
            all,
            selector,
            binding,
            inner,
        })
    }

    /// `CollectionIdentifiers`: `i, v`, `i, _`, `_, v` or `x`, tried in that order (the
    /// first two share their start, parsed once; what a second parse of it would record is
    /// what the first recorded).
    fn binding(&mut self) -> Option<Binding> {
        let start = self.pos;
        if let Some(first) = self.identifier() {
            let alone = self.pos;
            self.ws_opt();
            if self.lit(",") {
                self.ws_opt();
                if let Some(second) = self.identifier() {
                    return Some(Binding::IndexValue(first, second));
                }
                if self.lit("_") {
                    return Some(Binding::Index(first));
                }
            }
            // `"_" ...` is tried (and fails) before the identifier alone is taken.
            self.pos = start;
            self.lit("_");
            self.pos = alone;
            return Some(Binding::Default(first));
        }
        if self.lit("_") {
            self.ws_opt();
            if self.lit(",") {
                self.ws_opt();
                if let Some(second) = self.identifier() {
                    return Some(Binding::Value(second));
                }
            }
        }
        self.pos = start;
        None
    }

    /// `NotExpression`: `"not" _ NotExpression / ParenthesizedExpression` (so `not in Tags`
    /// still reads as the bare word `not` in `Tags`).
    fn not_expr(&mut self) -> Option<Expr> {
        if self.fatal.is_some() {
            return None;
        }
        let start = self.pos;
        if self.seq(&[Tok::Lit("not"), Tok::Ws]) {
            if !self.enter() {
                return None;
            }
            let inner = self.not_expr();
            self.depth -= 1;
            if let Some(e) = inner {
                return Some(Expr::Not(Box::new(e)));
            }
            if self.fatal.is_some() {
                return None;
            }
        }
        self.pos = start;
        self.paren()
    }

    /// `ParenthesizedExpression`: `"(" _? OrExpression _? ")"`, a match expression, or the
    /// grammar's "Unmatched parentheses" where the `)` is missing.
    fn paren(&mut self) -> Option<Expr> {
        let start = self.pos;
        if self.lit("(") {
            if !self.enter() {
                return None;
            }
            self.ws_opt();
            let inner = self.or_expr();
            self.depth -= 1;
            if self.fatal.is_some() {
                return None;
            }
            if let Some(e) = inner {
                self.ws_opt();
                if self.lit(")") {
                    return Some(e);
                }
                let after = self.pos;
                // The second alternative, a match, cannot start with `(`; tried for its wants.
                self.pos = start;
                self.match_expr();
                self.pos = after;
                if self.not_pred(|p| p.lit(")").then_some(())) {
                    self.error(after, "grouping", "Unmatched parentheses");
                }
                self.pos = start;
                return None;
            }
        }
        self.pos = start;
        self.match_expr()
    }

    /// `MatchExpression`: `Selector op Value`, `Selector is ...`, or `Value in Selector`;
    /// the position is restored where none matches.
    fn match_expr(&mut self) -> Option<Expr> {
        let start = self.pos;
        let m = self.match_selector_first().or_else(|| {
            self.pos = start;
            self.match_value_first()
        });
        if m.is_none() {
            self.pos = start;
        }
        m.map(|m| Expr::Match(Box::new(m)))
    }

    /// `MatchSelectorOpValue / MatchSelectorOp`.
    fn match_selector_first(&mut self) -> Option<Match> {
        let selector = self.selector()?;
        let after = self.pos;
        if let Some(op) = self.ops(BINARY_OPS) {
            if let Some(value) = self.value() {
                return Some(Match::new(selector, op, value));
            }
        }
        self.pos = after;
        let op = self.ops(UNARY_OPS)?;
        Some(Match::new(selector, op, Vec::new()))
    }

    /// `MatchValueOpSelector`, with the grammar's "Invalid selector" where the `in` is
    /// followed by no selector.
    fn match_value_first(&mut self) -> Option<Match> {
        let value = self.value()?;
        let op = self.ops(IN_OPS)?;
        let after = self.pos;
        if let Some(selector) = self.selector() {
            return Some(Match::new(selector, op, value));
        }
        if self.not_pred(|p| p.selector()) {
            self.error(after, "match", "Invalid selector");
        }
        None
    }

    // -- selectors and values -------------------------------------------------------------

    /// `Identifier`: `[a-zA-Z] [a-zA-Z0-9_/]*`.
    fn identifier(&mut self) -> Option<String> {
        let start = self.pos;
        if !self.class("[a-zA-Z]", |c| c.is_ascii_alphabetic()) {
            return None;
        }
        while self.class("[a-zA-Z0-9_/]", is_ident_char) {}
        Some(self.src[start..self.pos].to_string())
    }

    /// `Selector`: an identifier and its `.name`, `["key"]` and `.N` steps, or a quoted
    /// JSON pointer.
    fn selector(&mut self) -> Option<Selector> {
        let start = self.pos;
        if let Some(first) = self.identifier() {
            let mut path = vec![first];
            while let Some(step) = self.selector_step() {
                path.push(step);
            }
            return Some(Selector {
                path,
                pointer: false,
            });
        }
        if self.lit("\"") {
            let mut path = Vec::new();
            loop {
                let seg = self.pos;
                if !(self.lit("/") && self.class_plus(POINTER_CLASS, is_pointer_char)) {
                    self.pos = seg;
                    break;
                }
                let part = &self.src[seg + 1..self.pos];
                path.push(part.replace("~1", "/").replace("~0", "~"));
            }
            if self.lit("\"") {
                return Some(Selector {
                    path,
                    pointer: true,
                });
            }
        }
        self.pos = start;
        None
    }

    /// `SelectorOrIndex`: `"." Identifier`, an index expression, or `"." [0-9]+`.
    fn selector_step(&mut self) -> Option<String> {
        let start = self.pos;
        if self.lit(".") {
            if let Some(id) = self.identifier() {
                return Some(id);
            }
        }
        self.pos = start;
        if let Some(key) = self.index() {
            return Some(key);
        }
        self.pos = start;
        if self.lit(".") && self.class_plus("[0-9]", |c| c.is_ascii_digit()) {
            return Some(self.src[start + 1..self.pos].to_string());
        }
        self.pos = start;
        None
    }

    /// `IndexExpression`: `"[" _? StringLiteral _? "]"`, with the grammar's errors for a
    /// key that is no string and for a missing `]`.
    fn index(&mut self) -> Option<String> {
        let start = self.pos;
        if !self.lit("[") {
            return None;
        }
        self.ws_opt();
        let key_at = self.pos;
        let Some(key) = self.string_literal() else {
            self.pos = key_at;
            if self.not_pred(|p| p.string_literal()) {
                self.error(key_at, "index", "Invalid index");
            }
            self.pos = start;
            return None;
        };
        self.ws_opt();
        if self.lit("]") {
            return Some(String::from_utf8_lossy(&key).into_owned());
        }
        let after = self.pos;
        if self.not_pred(|p| p.lit("]").then_some(())) {
            self.error(after, "index", "Unclosed index expression");
        }
        self.pos = start;
        None
    }

    /// `Value`: a selector (read as its text), a number, or a string.
    fn value(&mut self) -> Option<Vec<u8>> {
        if let Some(sel) = self.selector() {
            return Some(sel.text().into_bytes());
        }
        if let Some(n) = self.number() {
            return Some(n.into_bytes());
        }
        self.string_literal()
    }

    /// `NumberLiteral`: `-`? then `0` or `[1-9][0-9]*`, then `.[0-9]+`?, followed by
    /// whitespace, the end or `)`; "Invalid number literal" where something else follows.
    fn number(&mut self) -> Option<String> {
        let start = self.pos;
        self.lit("-");
        if !self.lit("0") {
            if !self.class("[1-9]", |c| ('1'..='9').contains(&c)) {
                self.pos = start;
                return None;
            }
            while self.class("[0-9]", |c| c.is_ascii_digit()) {}
        }
        let frac = self.pos;
        if !(self.lit(".") && self.class_plus("[0-9]", |c| c.is_ascii_digit())) {
            self.pos = frac;
        }
        let end = self.pos;
        let after_ok = {
            let ok = self.ws() || self.eof() || self.lit(")");
            self.pos = end;
            ok
        };
        if after_ok {
            return Some(self.src[start..end].to_string());
        }
        if self.not_pred(|p| (p.ws() || p.eof() || p.lit(")")).then_some(())) {
            self.error(end, "number", "Invalid number literal");
        }
        self.pos = start;
        None
    }

    /// `StringLiteral`: backtick or double-quoted, unquoted as Go's `strconv.Unquote` does
    /// (an error there is the grammar's "invalid syntax"); "Unterminated string literal"
    /// where the input ends first. A double-quoted string ends at the first `"`, escaped
    /// or not, as bexpr's does.
    fn string_literal(&mut self) -> Option<Vec<u8>> {
        let start = self.pos;
        let quote = if self.lit("`") {
            '`'
        } else if self.lit("\"") {
            '"'
        } else {
            return None;
        };
        let body = self.pos;
        let len = self.src[body..]
            .find(quote)
            .unwrap_or(self.src.len() - body);
        self.pos = body + len;
        if !self.lit(if quote == '`' { "`" } else { "\"" }) {
            // At the end of the input: the grammar's second alternative.
            self.error(self.pos, "string", "Unterminated string literal");
            self.pos = start;
            return None;
        }
        let text = &self.src[body..body + len];
        let out = if quote == '`' {
            Some(text.replace('\r', "").into_bytes())
        } else {
            unquote(text)
        };
        Some(out.unwrap_or_else(|| {
            self.error(start, "string", "invalid syntax");
            Vec::new()
        }))
    }
}

const POINTER_CLASS: &str = "[\\pL\\pN-_.~:|]";

const BINARY_OPS: &[(&[Tok], Op)] = &[
    (&[Tok::WsOpt, Tok::Lit("=="), Tok::WsOpt], Op::Equal),
    (&[Tok::WsOpt, Tok::Lit("!="), Tok::WsOpt], Op::NotEqual),
    (&[Tok::Ws, Tok::Lit("contains"), Tok::Ws], Op::In),
    (
        &[
            Tok::Ws,
            Tok::Lit("not"),
            Tok::Ws,
            Tok::Lit("contains"),
            Tok::Ws,
        ],
        Op::NotIn,
    ),
    (&[Tok::Ws, Tok::Lit("matches"), Tok::Ws], Op::Matches),
    (
        &[
            Tok::Ws,
            Tok::Lit("not"),
            Tok::Ws,
            Tok::Lit("matches"),
            Tok::Ws,
        ],
        Op::NotMatches,
    ),
];

const UNARY_OPS: &[(&[Tok], Op)] = &[
    (
        &[Tok::Ws, Tok::Lit("is"), Tok::Ws, Tok::Lit("empty")],
        Op::IsEmpty,
    ),
    (
        &[
            Tok::Ws,
            Tok::Lit("is"),
            Tok::Ws,
            Tok::Lit("not"),
            Tok::Ws,
            Tok::Lit("empty"),
        ],
        Op::IsNotEmpty,
    ),
    (
        &[Tok::Ws, Tok::Lit("is"), Tok::Ws, Tok::Lit("nil")],
        Op::IsNil,
    ),
    (
        &[
            Tok::Ws,
            Tok::Lit("is"),
            Tok::Ws,
            Tok::Lit("not"),
            Tok::Ws,
            Tok::Lit("nil"),
        ],
        Op::IsNotNil,
    ),
];

const IN_OPS: &[(&[Tok], Op)] = &[
    (&[Tok::Ws, Tok::Lit("in"), Tok::Ws], Op::In),
    (
        &[Tok::Ws, Tok::Lit("not"), Tok::Ws, Tok::Lit("in"), Tok::Ws],
        Op::NotIn,
    ),
];

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '/'
}

fn is_pointer_char(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric() || matches!(c, '-' | '_' | '.' | '~' | ':' | '|')
}

/// The body of a double-quoted Go string literal unquoted, as `strconv.Unquote` does, or
/// none where Go finds it invalid (a newline, an unknown escape, a code point past
/// Unicode). `\x` and octal escapes give bytes, which need not be UTF-8.
fn unquote(text: &str) -> Option<Vec<u8>> {
    if text.contains('\n') {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        unescape(&mut chars, &mut out)?;
    }
    Some(out)
}

/// One escape after its backslash, appended to `out`.
fn unescape(chars: &mut std::str::Chars<'_>, out: &mut Vec<u8>) -> Option<()> {
    let byte = match chars.next()? {
        'a' => 7,
        'b' => 8,
        'f' => 12,
        'n' => b'\n',
        'r' => b'\r',
        't' => b'\t',
        'v' => 11,
        '\\' => b'\\',
        '"' => b'"',
        'x' => u8::try_from(hex(chars, 2)?).ok()?,
        d @ '0'..='7' => {
            let mut v = d.to_digit(8)?;
            for _ in 0..2 {
                v = v * 8 + chars.next()?.to_digit(8)?;
            }
            u8::try_from(v).ok()?
        }
        u @ ('u' | 'U') => {
            let c = char::from_u32(hex(chars, if u == 'u' { 4 } else { 8 })?)?;
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            return Some(());
        }
        _ => return None,
    };
    out.push(byte);
    Some(())
}

/// `n` hexadecimal digits.
fn hex(chars: &mut std::str::Chars<'_>, n: usize) -> Option<u32> {
    let mut v: u32 = 0;
    for _ in 0..n {
        v = v.checked_mul(16)? + chars.next()?.to_digit(16)?;
    }
    Some(v)
}

/// A `matches` operand compiled within [`REGEX_SIZE_MAX`].
fn compile(pattern: &[u8]) -> Result<Regex, FilterError> {
    let text = String::from_utf8_lossy(pattern);
    regex::RegexBuilder::new(&text)
        .size_limit(REGEX_SIZE_MAX)
        .build()
        .map_err(|e| FilterError::Regex {
            pattern: text.clone().into_owned(),
            reason: e
                .to_string()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" "),
        })
}

// ---------------------------------------------------------------------------------------
// Evaluation.

impl Expr {
    /// Compiles the operands of `matches` (once the whole expression has parsed, so that a
    /// syntax error is reported as one even after a bad pattern).
    fn compile(&mut self) -> Result<(), FilterError> {
        match self {
            Expr::Or(terms) | Expr::And(terms) => terms.iter_mut().try_for_each(Expr::compile),
            Expr::Not(e) => e.compile(),
            Expr::Collection(c) => c.inner.compile(),
            Expr::Match(m) if matches!(m.op, Op::Matches | Op::NotMatches) => {
                m.regex = Some(compile(&m.value)?);
                Ok(())
            }
            Expr::Match(_) => Ok(()),
        }
    }

    fn eval(&self, v: &Value, cx: &mut Scope) -> Result<bool, FilterError> {
        match self {
            Expr::Or(terms) => {
                for t in terms {
                    if t.eval(v, cx)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Expr::And(terms) => {
                for t in terms {
                    if !t.eval(v, cx)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Expr::Not(e) => Ok(!e.eval(v, cx)?),
            Expr::Match(m) => m.eval(v, cx),
            Expr::Collection(c) => c.eval(v, cx),
        }
    }
}

/// A name a collection expression bound for its body.
struct Local {
    name: String,
    bound: Bound,
}

/// What a name stands for: a path into the datum, as written (a name it starts with is
/// resolved in turn, outward), or a value of its own (a list index, a map key).
enum Bound {
    Path(Vec<String>),
    Value(Value),
}

/// What a selector resolves to.
enum Resolved<'a> {
    Path(Cow<'a, [String]>),
    Value(&'a Value),
}

/// One evaluation's names in scope, and the steps it has taken.
#[derive(Default)]
struct Scope {
    locals: Vec<Local>,
    steps: usize,
}

impl Scope {
    /// One more step (a match, a collection member), or the bound's error.
    fn step(&mut self) -> Result<(), FilterError> {
        self.steps += 1;
        if self.steps > FILTER_STEPS_MAX {
            return Err(FilterError::TooCostly);
        }
        Ok(())
    }

    /// `path` with the names in scope replaced, innermost first (bexpr's `getValue`): a
    /// name bound to a path is replaced by it and the result looked at again by the names
    /// further out; a name bound to a value is that value, with nothing after it.
    fn resolve<'a>(&'a self, path: &'a [String]) -> Result<Resolved<'a>, FilterError> {
        let mut path = Cow::Borrowed(path);
        for l in self.locals.iter().rev() {
            if path.first() != Some(&l.name) {
                continue;
            }
            match &l.bound {
                Bound::Value(v) if path.len() > 1 => {
                    return Err(FilterError::Eval(format!(
                        "{} references a {} so {} is invalid",
                        pointer(&path[..1]),
                        go_type_of_key(v),
                        pointer(&path)
                    )));
                }
                Bound::Value(v) => return Ok(Resolved::Value(v)),
                Bound::Path(p) => {
                    let mut full = p.clone();
                    full.extend_from_slice(&path[1..]);
                    path = Cow::Owned(full);
                }
            }
        }
        Ok(Resolved::Path(path))
    }
}

/// The Go type of a list index or map key a name stands for, as bexpr's `%T` prints it.
fn go_type_of_key(v: &Value) -> &'static str {
    if v.is_string() {
        "string"
    } else {
        "int"
    }
}

/// A path as a JSON pointer (pointerstructure's `String`).
fn pointer(path: &[String]) -> String {
    let mut s = String::new();
    for part in path {
        s.push('/');
        s.push_str(&part.replace('~', "~0").replace('/', "~1"));
    }
    s
}

impl Collection {
    /// bexpr's `any`/`all`: the body for each member, in order, until one decides. A key
    /// missing from a map and `null` (a nil list or map) have no members: `any` is false,
    /// `all` true. Each member is a step.
    fn eval(&self, root: &Value, cx: &mut Scope) -> Result<bool, FilterError> {
        let found = match cx.resolve(&self.selector.path)? {
            Resolved::Value(_) => None,
            Resolved::Path(p) => match lookup(root, &p)? {
                None => return Ok(self.all),
                Some(f) => Some(f),
            },
        };
        let members: Vec<(Value, String)> = match found {
            Some(Found {
                value: Value::Array(items),
                ..
            }) => (0..items.len())
                .map(|i| (Value::from(i), i.to_string()))
                .collect(),
            Some(Found {
                value: Value::Object(obj),
                map: true,
            }) => obj
                .keys()
                .map(|k| (Value::String(k.clone()), k.clone()))
                .collect(),
            Some(Found {
                value: Value::Null, ..
            }) => Vec::new(),
            _ => {
                return Err(FilterError::Eval(format!(
                    "{} is not a list or a map",
                    self.selector.text()
                )))
            }
        };
        for (index, key) in members {
            cx.step()?;
            let mut path = self.selector.path.clone();
            path.push(key);
            let bound = self.bind(index, path)?;
            let n = bound.len();
            cx.locals.extend(bound);
            let r = self.inner.eval(root, cx);
            cx.locals.truncate(cx.locals.len() - n);
            let r = r?;
            if r != self.all {
                return Ok(r);
            }
        }
        Ok(self.all)
    }

    /// The names one member binds: `index` is its index or key, `path` the selector's path
    /// to it as written.
    fn bind(&self, index: Value, path: Vec<String>) -> Result<Vec<Local>, FilterError> {
        let local = |name: &String, bound| Local {
            name: name.clone(),
            bound,
        };
        let is_map = index.is_string();
        Ok(match &self.binding {
            Binding::Default(x) if is_map => vec![local(x, Bound::Value(index))],
            Binding::Default(x) | Binding::Value(x) => vec![local(x, Bound::Path(path))],
            Binding::Index(i) => vec![local(i, Bound::Value(index))],
            Binding::IndexValue(i, v) if i == v => {
                return Err(FilterError::Eval(format!(
                    "{} cannot be used as a placeholder for both the index and the value",
                    go_quote(i.as_bytes())
                )))
            }
            Binding::IndexValue(i, v) => {
                vec![local(i, Bound::Value(index)), local(v, Bound::Path(path))]
            }
        })
    }
}

/// A value a selector reached, and whether it stands for a Go map.
struct Found<'v> {
    value: &'v Value,
    map: bool,
}

impl Match {
    fn new(selector: Selector, op: Op, value: Vec<u8>) -> Match {
        Match {
            selector,
            op,
            value,
            regex: None,
        }
    }

    fn eval(&self, root: &Value, cx: &mut Scope) -> Result<bool, FilterError> {
        cx.step()?;
        let found = match cx.resolve(&self.selector.path)? {
            Resolved::Value(v) => Some(Found {
                value: v,
                map: false,
            }),
            Resolved::Path(p) => lookup(root, &p)?,
        };
        let Some(found) = found else {
            return Ok(self.op.missing());
        };
        let v = found.value;
        let yes = match self.op {
            Op::Equal => self.equal(v)?,
            Op::NotEqual => !self.equal(v)?,
            Op::In => self.contains(&found)?,
            Op::NotIn => !self.contains(&found)?,
            Op::IsEmpty => self.empty(&found)?,
            Op::IsNotEmpty => !self.empty(&found)?,
            Op::Matches => self.regex_match(&found)?,
            Op::NotMatches => !self.regex_match(&found)?,
            Op::IsNil => self.nil(&found)?,
            Op::IsNotNil => !self.nil(&found)?,
        };
        Ok(yes)
    }

    /// `==` on a primitive: the literal converted to the field's type.
    fn equal(&self, v: &Value) -> Result<bool, FilterError> {
        primitive_eq(&self.value, v)
            .ok_or_else(|| {
                FilterError::Eval(
                    "unable to find suitable primitive comparison function for matching".into(),
                )
            })?
            .map_err(|e| FilterError::Eval(format!("error getting match value in expression: {e}")))
    }

    /// `in`/`contains`: membership in an array, a key of a map, a substring of a string.
    fn contains(&self, found: &Found<'_>) -> Result<bool, FilterError> {
        match found.value {
            Value::Null => Ok(false),
            Value::Object(obj) if found.map => {
                Ok(obj.keys().any(|k| k.as_bytes() == self.value.as_slice()))
            }
            Value::String(s) => Ok(memmem(s.as_bytes(), &self.value)),
            Value::Array(items) => {
                for item in items {
                    let eq = primitive_eq(&self.value, item).ok_or_else(|| {
                        FilterError::Eval(
                            "unable to find suitable primitive comparison function for \"in\" \
                             comparison"
                                .into(),
                        )
                    })?;
                    if eq.map_err(|e| {
                        FilterError::Eval(format!("error getting match value in expression: {e}"))
                    })? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            other => Err(self.cannot("in/contains", kind(other, found.map))),
        }
    }

    /// `is empty`: no elements, keys or characters.
    fn empty(&self, found: &Found<'_>) -> Result<bool, FilterError> {
        match found.value {
            Value::Null => Ok(true),
            Value::Array(items) => Ok(items.is_empty()),
            Value::Object(obj) if found.map => Ok(obj.is_empty()),
            Value::String(s) => Ok(s.is_empty()),
            other => Err(self.cannot("is-empty", kind(other, found.map))),
        }
    }

    /// `is nil`: only `null` is; arrays, objects and missing map keys are not (the last
    /// never gets here).
    fn nil(&self, found: &Found<'_>) -> Result<bool, FilterError> {
        match found.value {
            Value::Null => Ok(true),
            Value::Array(_) | Value::Object(_) => Ok(false),
            other => Err(self.cannot("is-nil", kind(other, found.map))),
        }
    }

    /// `matches`: the regular expression found anywhere in a string.
    fn regex_match(&self, found: &Found<'_>) -> Result<bool, FilterError> {
        let Value::String(s) = found.value else {
            return Err(FilterError::Eval(format!(
                "value of type {} is not convertible to []byte",
                go_type(found.value, found.map)
            )));
        };
        Ok(self.regex.as_ref().is_some_and(|re| re.is_match(s)))
    }

    fn cannot(&self, what: &str, kind: &str) -> FilterError {
        FilterError::Eval(format!(
            "cannot perform {what} operations on type {kind} for selector: {}",
            go_quote(self.selector.text().as_bytes())
        ))
    }
}

/// Follows `path` from `root`: none for a key missing from a map at the last step, an
/// error where bexpr's JSON-pointer walk fails.
fn lookup<'v>(root: &'v Value, path: &[String]) -> Result<Option<Found<'v>>, FilterError> {
    let mut cur = Found {
        value: root,
        map: false,
    };
    for (i, part) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let ptr = || pointer(path);
        let next = match cur.value {
            Value::Object(obj) => match obj.get(part) {
                Some(v) => Found {
                    value: v,
                    map: MAP_FIELDS.contains(&part.as_str()) || (cur.map && v.is_object()),
                },
                None if cur.map && last => return Ok(None),
                None if cur.map => {
                    return Err(not_found(format!(
                        "{} at part {i}: couldn't find key {}",
                        ptr(),
                        go_quote(part.as_bytes())
                    )))
                }
                None => {
                    return Err(not_found(format!(
                        "{} at part {i}: couldn't find key: struct field with name {}",
                        ptr(),
                        go_quote(part.as_bytes())
                    )))
                }
            },
            Value::Array(items) => Found {
                value: array_item(items, part)
                    .map_err(|e| not_found(format!("{} at part {i}: {e}", ptr())))?,
                map: cur.map,
            },
            Value::Null if cur.map && last => return Ok(None),
            other => {
                let kind = if other.is_null() {
                    "invalid"
                } else {
                    kind(other, false)
                };
                return Err(not_found(format!(
                    "{}: at part {i}, invalid value kind: {kind}",
                    ptr()
                )));
            }
        };
        cur = next;
    }
    Ok(Some(cur))
}

fn not_found(msg: String) -> FilterError {
    FilterError::Eval(format!("error finding value in datum: {msg}"))
}

/// The array element a path step names, as pointerstructure finds it.
fn array_item<'v>(items: &'v [Value], part: &str) -> Result<&'v Value, String> {
    let idx = parse_int(part, i64::MIN as i128, i64::MAX as i128).map_err(|_| {
        format!(
            "couldn't convert value {} to type int",
            go_quote(part.as_bytes())
        )
    })?;
    usize::try_from(idx)
        .ok()
        .and_then(|i| items.get(i))
        .ok_or_else(|| format!("index {idx} is out of range (length = {})", items.len()))
}

/// Whether `lit` equals the primitive `v` once converted to its type; none if `v` is no
/// primitive, an error (Go's `strconv` text) if `lit` does not convert.
fn primitive_eq(lit: &[u8], v: &Value) -> Option<Result<bool, String>> {
    let text = || String::from_utf8_lossy(lit);
    Some(match v {
        Value::String(s) => Ok(s.as_bytes() == lit),
        Value::Bool(b) => parse_bool(&text()).map(|l| l == *b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                parse_int(&text(), i64::MIN as i128, i64::MAX as i128)
                    .map(|l| l == i128::from(i))
                    .map_err(|e| num_error("ParseInt", &text(), e))
            } else if let Some(u) = n.as_u64() {
                parse_int(&text(), 0, u64::MAX as i128)
                    .map(|l| l == i128::from(u))
                    .map_err(|e| num_error("ParseUint", &text(), e))
            } else {
                parse_float(&text())
                    .map(|l| Some(l) == n.as_f64())
                    .map_err(|e| num_error("ParseFloat", &text(), e))
            }
        }
        _ => return None,
    })
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(num_error("ParseBool", s, NumError::Syntax)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumError {
    Syntax,
    Range,
}

fn num_error(func: &str, s: &str, e: NumError) -> String {
    let why = match e {
        NumError::Syntax => "invalid syntax",
        NumError::Range => "value out of range",
    };
    format!("strconv.{func}: parsing {}: {why}", go_quote(s.as_bytes()))
}

/// Go's `strconv.ParseInt(s, 0, 64)` (or `ParseUint` with `min` 0): a sign (not for
/// unsigned), a `0x`, `0o`, `0b` or `0` base prefix, and underscores between digits.
fn parse_int(s: &str, min: i128, max: i128) -> Result<i128, NumError> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'+') if min < 0 => (false, &s[1..]),
        Some(b'-') if min < 0 => (true, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    if digits.is_empty() || !underscores_ok(digits, prefixed) {
        return Err(NumError::Syntax);
    }
    let mut v: i128 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix).ok_or(NumError::Syntax)?;
        v = v
            .saturating_mul(i128::from(radix))
            .saturating_add(i128::from(d));
    }
    let v = if neg { -v } else { v };
    if v < min || v > max {
        return Err(NumError::Range);
    }
    Ok(v)
}

/// Go's rule for underscores in number literals: each between two digits, or right after
/// a base prefix.
fn underscores_ok(digits: &str, prefixed: bool) -> bool {
    if !digits.contains('_') {
        return true;
    }
    let b = digits.as_bytes();
    let mut prev_digit = prefixed;
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            let next_digit = b.get(i + 1).is_some_and(|&n| n != b'_');
            if !prev_digit || !next_digit {
                return false;
            }
            prev_digit = false;
        } else {
            prev_digit = true;
        }
    }
    true
}

/// Go's `strconv.ParseFloat(s, 64)` for decimal forms, `inf`, `infinity` and `nan`
/// (hexadecimal floats and underscores are not taken).
fn parse_float(s: &str) -> Result<f64, NumError> {
    if s.contains('_') || s.to_ascii_lowercase().contains('x') {
        return Err(NumError::Syntax);
    }
    let f: f64 = s.parse().map_err(|_| NumError::Syntax)?;
    let literal_inf = s.to_ascii_lowercase().contains("inf");
    if f.is_infinite() && !literal_inf {
        return Err(NumError::Range);
    }
    Ok(f)
}

/// Go's `reflect.Kind` name for a JSON value standing for a Go value.
fn kind(v: &Value, map: bool) -> &'static str {
    match v {
        Value::Null => "ptr",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() => "int",
        Value::Number(n) if n.is_u64() => "uint64",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "slice",
        Value::Object(_) if map => "map",
        Value::Object(_) => "struct",
    }
}

/// A Go type name for a JSON value, as `matches` names what it cannot read.
fn go_type(v: &Value, map: bool) -> &'static str {
    match v {
        Value::Array(_) => "[]interface {}",
        Value::Object(_) if map => "map[string]interface {}",
        Value::Null => "<nil>",
        other => kind(other, map),
    }
}

/// Whether `needle` occurs in `hay` (Go's `strings.Contains`: the empty needle does).
fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
#[path = "filter_test.rs"]
mod filter_test;
