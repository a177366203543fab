//! Host patterns in ClusterShell's nodeset syntax: `web[01-20]`, `db[1-3,7]`, `r[1-2]n[1-4]`,
//! `n[1-9/2]`, set operators between items (`web[1-9]!web5`, `@web&@eu`), and folding names
//! back into that form for reports.
//!
//! The grammar, as ClusterShell documents it:
//!
//! - A pattern is a list of items joined by operators, applied left to right: `,` union,
//!   `!` difference, `&` intersection, `^` symmetric difference. Whitespace around items is
//!   ignored; an item may not be empty (`a,,b`, `a!`, `!a` are errors).
//! - An item is a name with brackets: each bracket is a comma-separated list of `N`, `A-B`
//!   or `A-B/STEP` (a step needs a range: `3/2` is an error); several brackets make a
//!   cartesian product, leftmost varying slowest. Bounds may be negative (`n[-5-5]`,
//!   `n[-8--4]`).
//! - Zero padding: a bound written with a leading zero (`01`) pads its range to its width;
//!   both bounds must then have the same width (`n[1-044]` is an error). `01` and `001` are
//!   different names.
//! - Digits written against a bracket belong to it: `node-00[1-6]` is `node-[001-006]`,
//!   `node-[1-2]0` is `node-[10,20]` (then a step is an error). Only digits between two
//!   brackets (`n[1-4]0[3-4]`) or a bracket right after another (`n[1-4][3-4]`) are errors.
//! - A name may not hold a number above 10^100, nor whitespace.
//! - `@NAME` is a group, resolved by the caller's [`Groups`] (the CLI: the Polyfile's roles;
//!   `@all` and `@*` every site). `@web[1-3]` is the groups `web1`, `web2`, `web3`.
//!
//! Everything is counted from the parsed pattern before any name is made: a pattern whose
//! items together would make more than [`MAX_EXPANSION`] names is an error, in time and
//! memory proportional to the pattern's own length.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// The most names one pattern may make, summed over all its items (so a difference of two
/// huge sets is refused rather than built): a typo like `web[1-1000000000]` is an error,
/// not an out-of-memory. Counted before duplicates are removed (`n[1-9,1-9]` counts 18).
pub const MAX_EXPANSION: usize = 1_000_000;

/// The most bytes of names one pattern may make, bounded from the pattern before any name is
/// made (a name is never longer than the item that makes it): a kilobyte of pattern with
/// eight brackets would otherwise make 390,000 names of a kilobyte each.
pub const MAX_EXPANSION_BYTES: usize = 64 << 20;

/// Numbers longer than this are text to [`fold`] (they would overflow `u64`).
const MAX_DIGITS: usize = 18;

/// A pattern that is not a valid host pattern; `offset` is the byte offset in the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {} of `{pattern}`)", offset + 1)]
pub struct RangeError {
    /// The pattern.
    pub pattern: String,
    /// Where in it (a byte offset).
    pub offset: usize,
    /// What is wrong there.
    pub message: String,
}

/// Where `@NAME` items take their names from, and what a plain name stands for.
pub trait Groups {
    /// The names in group `name` (`all` and `*` are every name), or why there are none.
    fn group(&self, name: &str) -> Result<Vec<String>, String>;

    /// The names a plain name stands for: itself, unless the caller maps names (a role to
    /// its sites, say).
    fn name(&self, name: &str) -> Result<Vec<String>, String> {
        Ok(vec![name.to_owned()])
    }
}

/// No groups: `@NAME` is an error.
pub struct NoGroups;

impl Groups for NoGroups {
    fn group(&self, name: &str) -> Result<Vec<String>, String> {
        Err(format!(
            "`@{name}` is a group, and there are no groups here (roles come from a Polyfile)"
        ))
    }
}

/// Every group is empty: checks a pattern's syntax and size without resolving its groups.
pub struct EmptyGroups;

impl Groups for EmptyGroups {
    fn group(&self, _: &str) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
}

/// Expands `pattern` into its names, sorted as ClusterShell's `nodeset -e` sorts them (by
/// the name's text, then its numbers), without duplicates. `@NAME` is an error.
///
/// ```
/// use polyshell_sites::range::expand;
/// assert_eq!(expand("web[01-03]").unwrap(), ["web01", "web02", "web03"]);
/// assert_eq!(expand("db[1-2,7]").unwrap(), ["db1", "db2", "db7"]);
/// assert_eq!(expand("r[1-2]n[1-2]").unwrap(), ["r1n1", "r1n2", "r2n1", "r2n2"]);
/// assert_eq!(expand("web[1-4]!web2").unwrap(), ["web1", "web3", "web4"]);
/// assert_eq!(expand("n[1-5] & n[4-9]").unwrap(), ["n4", "n5"]);
/// ```
pub fn expand(pattern: &str) -> Result<Vec<String>, RangeError> {
    expand_with(pattern, &NoGroups)
}

/// [`expand`], with `@NAME` items and plain names resolved by `groups`.
pub fn expand_with(pattern: &str, groups: &dyn Groups) -> Result<Vec<String>, RangeError> {
    let err = |offset: usize, message: String| RangeError {
        pattern: pattern.to_owned(),
        offset,
        message,
    };
    let over_budget = |at: usize| {
        err(
            at,
            format!("the pattern makes more than {MAX_EXPANSION} names"),
        )
    };
    // First every item is parsed and counted, then names are made.
    let mut items = Vec::new();
    let mut total: u64 = 0;
    let mut bytes: u64 = 0;
    for (op, at, text) in split_items(pattern).map_err(|(o, m)| err(o, m))? {
        let (group, body, body_at) = match text.strip_prefix('@') {
            Some(rest) => (true, rest, at + 1),
            None => (false, text, at),
        };
        if group && body.is_empty() {
            return Err(err(at, "`@` without a group name".into()));
        }
        let item = parse_item(body).map_err(|(o, m)| err(body_at + o, m))?;
        total = match total.checked_add(item.count) {
            Some(t) if t <= MAX_EXPANSION as u64 => t,
            _ => return Err(over_budget(at)),
        };
        let longest = item.max_len();
        bytes = match item
            .count
            .checked_mul(longest)
            .and_then(|b| bytes.checked_add(b))
        {
            Some(b) if b <= MAX_EXPANSION_BYTES as u64 => b,
            _ => {
                let count = item.count;
                let mib = MAX_EXPANSION_BYTES >> 20;
                return Err(err(
                    at,
                    format!(
                        "the pattern makes more than {mib} MiB of names \
                         ({count} names of up to {longest} bytes)"
                    ),
                ));
            }
        };
        items.push((op, at, group, item));
    }
    // One plain item (`web[01-20]`, the common case): no set algebra, no hashing.
    if let [(Op::Union, at, false, item)] = items.as_slice() {
        let mut names = Vec::with_capacity(item.count as usize);
        let mut failed = None;
        item.each(&mut |name| {
            if failed.is_none() {
                match groups.name(name) {
                    Ok(more) => names.extend(more),
                    Err(message) => failed = Some(message),
                }
            }
        });
        if let Some(message) = failed {
            return Err(err(*at, message));
        }
        sort_names(&mut names);
        names.dedup();
        return Ok(names);
    }
    let mut set: HashSet<String> = HashSet::new();
    for (op, at, group, item) in items {
        let mut names: HashSet<String> = HashSet::new();
        let mut failed = None;
        item.each(&mut |name| {
            if failed.is_some() {
                return;
            }
            let resolved = if group {
                match name {
                    "*" => groups.group("all"),
                    _ => groups.group(name),
                }
            } else {
                groups.name(name)
            };
            match resolved {
                Ok(more) => names.extend(more),
                Err(message) => failed = Some(message),
            }
        });
        if let Some(message) = failed {
            return Err(err(at, message));
        }
        if group {
            total = total.saturating_add(names.len() as u64);
            if total > MAX_EXPANSION as u64 {
                return Err(over_budget(at));
            }
        }
        match op {
            Op::Union => set.extend(names),
            Op::Difference => set.retain(|n| !names.contains(n)),
            Op::Intersection => set.retain(|n| names.contains(n)),
            Op::Xor => {
                for name in names {
                    if !set.remove(&name) {
                        set.insert(name);
                    }
                }
            }
        }
    }
    let mut names: Vec<String> = set.into_iter().collect();
    sort_names(&mut names);
    Ok(names)
}

/// Sorts in [`sort_key`]'s order: names already in order are only checked (in place);
/// others are sorted by [`packed_key`], one flat key per name compared with `memcmp`.
fn sort_names(names: &mut Vec<String>) {
    if names
        .windows(2)
        .all(|w| natural_cmp(&w[0], &w[1]) != std::cmp::Ordering::Greater)
    {
        return;
    }
    let mut keyed: Vec<(Vec<u8>, String)> = std::mem::take(names)
        .into_iter()
        .map(|n| (packed_key(&n), n))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    names.extend(keyed.into_iter().map(|(_, n)| n));
}

/// [`sort_key`] as one byte string that compares the same way: the text with every byte
/// after a 1 and a 0 at its end, then each run of digits as a 1, its length (4 bytes, big
/// endian) and its digits, and a 0.
pub fn packed_key(name: &str) -> Vec<u8> {
    let bytes = name.as_bytes();
    let mut key = Vec::with_capacity(bytes.len() * 2 + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            key.extend_from_slice(&[1, b'%', 1, b's']);
        } else {
            key.extend_from_slice(&[1, bytes[i]]);
            i += 1;
        }
    }
    key.push(0);
    for run in bytes
        .split(|c| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
    {
        key.push(1);
        key.extend_from_slice(&(run.len() as u32).to_be_bytes());
        key.extend_from_slice(run);
    }
    key.push(0);
    key
}

/// The order of [`sort_key`], comparing in place: first the names' text with every run of
/// digits read as `%s`, then the runs of digits, each by length, then by its digits.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn text(s: &str) -> impl Iterator<Item = u8> + '_ {
        let bytes = s.as_bytes();
        let (mut i, mut pending) = (0, None);
        std::iter::from_fn(move || {
            if let Some(c) = pending.take() {
                return Some(c);
            }
            let c = *bytes.get(i)?;
            if c.is_ascii_digit() {
                while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                pending = Some(b's');
                return Some(b'%');
            }
            i += 1;
            Some(c)
        })
    }
    fn numbers(s: &str) -> impl Iterator<Item = (usize, &[u8])> + '_ {
        s.as_bytes()
            .split(|c| !c.is_ascii_digit())
            .filter(|run| !run.is_empty())
            .map(|run| (run.len(), run))
    }
    text(a)
        .cmp(text(b))
        .then_with(|| numbers(a).cmp(numbers(b)))
}

/// How many names `pattern` makes (`@NAME` is an error).
pub fn count(pattern: &str) -> Result<usize, RangeError> {
    expand(pattern).map(|n| n.len())
}

/// Whether `name` contains pattern syntax (and so may stand for other names than itself).
pub fn is_pattern(name: &str) -> bool {
    name.contains(['[', ',', ']', '!', '&', '^', '@'])
}

/// The order of `nodeset -e`: by the name's text with its numbers taken out, then by the
/// numbers (shorter first, so `n9` before `n10` and `n1` before `n01`).
pub fn sort_key(name: &str) -> (String, Vec<(usize, String)>) {
    let mut text = String::new();
    let mut numbers = Vec::new();
    let mut rest = name;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        text.push_str(&rest[..start]);
        let len = rest[start..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - start);
        text.push_str("%s");
        numbers.push((len, rest[start..start + len].to_owned()));
        rest = &rest[start + len..];
    }
    text.push_str(rest);
    (text, numbers)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Union,
    Difference,
    Intersection,
    Xor,
}

type Fail = (usize, String);

/// The items of a pattern with the operator before each (the first: union), each trimmed of
/// whitespace, with its byte offset.
fn split_items(pattern: &str) -> Result<Vec<(Op, usize, &str)>, Fail> {
    if pattern.trim().is_empty() {
        return Err((0, "empty pattern".into()));
    }
    let mut items = Vec::new();
    let (mut depth, mut start, mut open_at) = (0usize, 0usize, 0usize);
    let mut op = Op::Union;
    let mut push = |op: Op, from: usize, to: usize, next: Option<char>| {
        let raw = &pattern[from..to];
        let text = raw.trim();
        if text.is_empty() {
            let message = match (from, next) {
                (0, Some(c)) => format!("`{c}` needs an item before it"),
                (_, Some(c)) => format!("an empty item before `{c}`"),
                (_, None) => "an operator needs an item after it".to_owned(),
            };
            return Err((from.min(pattern.len().saturating_sub(1)), message));
        }
        let lead = raw.len() - raw.trim_start().len();
        items.push((op, from + lead, text));
        Ok(())
    };
    for (i, c) in pattern.char_indices() {
        match c {
            '[' if depth > 0 => return Err((i, "`[` inside a bracket".into())),
            '[' => {
                depth = 1;
                open_at = i;
            }
            ']' if depth == 0 => return Err((i, "`]` without `[`".into())),
            ']' => depth = 0,
            ',' | '!' | '&' | '^' if depth == 0 => {
                push(op, start, i, Some(c))?;
                op = match c {
                    ',' => Op::Union,
                    '!' => Op::Difference,
                    '&' => Op::Intersection,
                    _ => Op::Xor,
                };
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err((open_at, "unclosed `[`".into()));
    }
    push(op, start, pattern.len(), None)?;
    Ok(items)
}

/// One parsed item: text between dimensions, and the numbers of each dimension.
struct Item {
    /// `texts.len() == dims.len() + 1`.
    texts: Vec<String>,
    dims: Vec<Vec<Span>>,
    /// How many names it makes (an upper bound: overlaps are counted twice).
    count: u64,
}

impl Item {
    /// The longest name it makes, in bytes.
    fn max_len(&self) -> u64 {
        let texts: usize = self.texts.iter().map(String::len).sum();
        let dims: usize = self
            .dims
            .iter()
            .map(|spans| spans.iter().map(Span::max_len).max().unwrap_or(0))
            .sum();
        (texts + dims) as u64
    }

    fn each(&self, emit: &mut dyn FnMut(&str)) {
        let mut name = self.texts[0].clone();
        self.product(0, &mut name, emit);
    }

    fn product(&self, d: usize, name: &mut String, emit: &mut dyn FnMut(&str)) {
        if d == self.dims.len() {
            emit(name);
            return;
        }
        let len = name.len();
        for span in &self.dims[d] {
            span.each(&mut |number| {
                name.push_str(number);
                name.push_str(&self.texts[d + 1]);
                self.product(d + 1, name, emit);
                name.truncate(len);
            });
        }
    }
}

/// Numbers `lo` to `hi` by `step`, non-negative ones padded to `pad` digits; or one number
/// too long for arithmetic, kept as written.
#[derive(Debug, Clone)]
enum Span {
    Range {
        lo: i128,
        hi: i128,
        step: i128,
        pad: usize,
    },
    Literal(String),
}

impl Span {
    /// The longest number (or literal) it makes, in bytes.
    fn max_len(&self) -> usize {
        match self {
            Span::Range { lo, hi, pad, .. } => {
                let width = |v: i128| v.unsigned_abs().to_string().len() + usize::from(v < 0);
                width(*lo).max(width(*hi)).max(*pad)
            }
            Span::Literal(s) => s.len(),
        }
    }

    fn count(&self) -> u64 {
        match self {
            Span::Range { lo, hi, step, .. } => {
                u64::try_from((hi - lo) / step + 1).unwrap_or(u64::MAX)
            }
            Span::Literal(_) => 1,
        }
    }

    fn each(&self, emit: &mut dyn FnMut(&str)) {
        match self {
            Span::Range { lo, hi, step, pad } => {
                let mut v = *lo;
                while v <= *hi {
                    emit(&number_text(v, *pad));
                    v += step;
                }
            }
            Span::Literal(text) => emit(text),
        }
    }
}

fn number_text(v: i128, pad: usize) -> String {
    if v < 0 {
        format!("-{}", v.unsigned_abs())
    } else {
        format!("{v:0pad$}")
    }
}

/// The most digits a bound of a range may have (`i128` arithmetic); a single number may
/// have up to 101 (ClusterShell's limit: 10^100).
const MAX_RANGE_DIGITS: usize = 38;

enum Piece<'a> {
    Text(&'a str, usize),
    Bracket(&'a str, usize),
}

/// Parses one item (without its `@`); offsets in errors are relative to `text`.
fn parse_item(text: &str) -> Result<Item, Fail> {
    // Text and brackets, in order (brackets were checked to pair up by `split_items`).
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut at = 0;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or((at + open, "unclosed `[`".to_owned()))?;
        if open > 0 {
            let t = &rest[..open];
            if let Some(i) = t.find(char::is_whitespace) {
                return Err((at + i, "whitespace inside a name".into()));
            }
            pieces.push(Piece::Text(t, at));
        } else if matches!(pieces.last(), Some(Piece::Bracket(..))) {
            return Err((
                at,
                "`[` right after `]`: put the numbers in one bracket, or a name part between"
                    .into(),
            ));
        }
        pieces.push(Piece::Bracket(&rest[open + 1..close], at + open + 1));
        at += close + 1;
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        if let Some(i) = rest.find(char::is_whitespace) {
            return Err((at + i, "whitespace inside a name".into()));
        }
        pieces.push(Piece::Text(rest, at));
    }

    let mut texts = vec![String::new()];
    let mut dims: Vec<Vec<Span>> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        match *piece {
            Piece::Text(t, t_at) => {
                let prev_bracket = i > 0;
                let next_bracket = matches!(pieces.get(i + 1), Some(Piece::Bracket(..)));
                // Leading digits went to the bracket before, trailing ones go to the next.
                let lead = if prev_bracket { digits_at_start(t) } else { 0 };
                let trail = if next_bracket {
                    digits_at_end(&t[lead..])
                } else {
                    0
                };
                if prev_bracket && next_bracket && lead == t.len() {
                    return Err((t_at, "only digits between `]` and `[`".into()));
                }
                let middle = &t[lead..t.len() - trail];
                single_numbers(middle, t_at + lead, &mut texts, &mut dims)?;
            }
            Piece::Bracket(body, b_at) => {
                let before = match i.checked_sub(1).map(|j| &pieces[j]) {
                    Some(Piece::Text(t, _)) => &t[t.len() - digits_at_end(t)..],
                    _ => "",
                };
                let after = match pieces.get(i + 1) {
                    Some(Piece::Text(t, _)) => &t[..digits_at_start(t)],
                    _ => "",
                };
                // A bracket with digits next to it (`00[1-6]`, `[1-2]0`) is one range.
                let spans = if before.is_empty() && after.is_empty() {
                    parse_ranges(body).map_err(|(o, m)| (b_at + o, m))?
                } else {
                    let body = with_trailing(body, after).map_err(|m| (b_at, m))?;
                    let spans = parse_ranges(&body).map_err(|(_, m)| (b_at, m))?;
                    with_leading(before, spans).map_err(|m| (b_at, m))?
                };
                dims.push(spans);
                texts.push(String::new());
            }
        }
    }
    let count = dims.iter().try_fold(1u64, |acc, spans| {
        let n = spans
            .iter()
            .try_fold(0u64, |acc, s| acc.checked_add(s.count()))?;
        acc.checked_mul(n)
    });
    Ok(Item {
        texts,
        dims,
        count: count.unwrap_or(u64::MAX),
    })
}

fn digits_at_start(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

fn digits_at_end(s: &str) -> usize {
    s.bytes().rev().take_while(u8::is_ascii_digit).count()
}

/// Text outside brackets: each digit run is a dimension of one number.
fn single_numbers(
    text: &str,
    at: usize,
    texts: &mut Vec<String>,
    dims: &mut Vec<Vec<Span>>,
) -> Result<(), Fail> {
    let mut rest = text;
    let mut offset = at;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        if let Some(last) = texts.last_mut() {
            last.push_str(&rest[..start]);
        }
        let len = digits_at_start(&rest[start..]);
        let digits = &rest[start..start + len];
        if above_limit(digits) {
            return Err((offset + start, "a number above 10^100".into()));
        }
        dims.push(vec![Span::Literal(digits.to_owned())]);
        texts.push(String::new());
        offset += start + len;
        rest = &rest[start + len..];
    }
    if let Some(last) = texts.last_mut() {
        last.push_str(rest);
    }
    Ok(())
}

/// Whether a digit string is above 10^100 (ClusterShell's largest index).
fn above_limit(digits: &str) -> bool {
    let significant = digits.trim_start_matches('0');
    significant.len() > 101
        || significant.len() == 101 && significant.bytes().skip(1).any(|b| b != b'0')
}

/// Digits right after a bracket (`[1-2]0`) join each of its numbers: `1-2` becomes
/// `10-20/10`.
fn with_trailing(body: &str, digits: &str) -> Result<String, String> {
    if digits.is_empty() {
        return Ok(body.to_owned());
    }
    if body.contains('/') {
        return Err(format!("digits `{digits}` after a bracket with a step"));
    }
    if negative(body) {
        return Err(format!("digits `{digits}` after a negative range"));
    }
    let step = format!("/1{}", "0".repeat(digits.len()));
    Ok(body
        .split(',')
        .map(|item| {
            if item.contains('-') {
                let bounds: Vec<String> = item
                    .split('-')
                    .map(|b| format!("{}{digits}", b.trim()))
                    .collect();
                format!("{}{step}", bounds.join("-"))
            } else {
                format!("{}{digits}", item.trim())
            }
        })
        .collect::<Vec<_>>()
        .join(","))
}

fn negative(body: &str) -> bool {
    let compact: String = body.split_whitespace().collect();
    format!(",{compact}").contains(",-")
}

/// Digits right before a bracket (`00[1-6]`) begin each of its numbers: each run of
/// consecutive numbers becomes one range with the digits in front of both bounds.
fn with_leading(digits: &str, spans: Vec<Span>) -> Result<Vec<Span>, String> {
    if digits.is_empty() {
        return Ok(spans);
    }
    let total = spans
        .iter()
        .try_fold(0u64, |acc, s| acc.checked_add(s.count()))
        .unwrap_or(u64::MAX);
    if total > MAX_EXPANSION as u64 {
        return Err(format!("the bracket makes more than {MAX_EXPANSION} names"));
    }
    let mut numbers: BTreeSet<(usize, String)> = BTreeSet::new();
    for span in &spans {
        if matches!(span, Span::Range { lo, .. } if *lo < 0) {
            return Err(format!("digits `{digits}` before a negative range"));
        }
        span.each(&mut |n| {
            numbers.insert((n.len(), n.to_owned()));
        });
    }
    // Runs of consecutive numbers written alike (all padded to one width, or unpadded).
    let mut runs: Vec<(String, String)> = Vec::new();
    let mut last: Option<(u128, bool, usize)> = None;
    for (len, n) in numbers {
        let value: Option<u128> = n.parse().ok();
        let padded = len > 1 && n.starts_with('0');
        let joins = match (last, value) {
            (Some((prev, was_padded, width)), Some(v)) => {
                v == prev + 1 && padded == was_padded && (!padded || len == width)
            }
            _ => false,
        };
        match runs.last_mut() {
            Some(run) if joins => run.1 = n.clone(),
            _ => runs.push((n.clone(), n.clone())),
        }
        last = value.map(|v| (v, padded, len));
    }
    let text: Vec<String> = runs
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                format!("{digits}{lo}")
            } else {
                format!("{digits}{lo}-{digits}{hi}")
            }
        })
        .collect();
    parse_ranges(&text.join(",")).map_err(|(_, m)| m)
}

/// The comma-separated ranges of one bracket.
fn parse_ranges(body: &str) -> Result<Vec<Span>, Fail> {
    let mut out = Vec::new();
    let mut offset = 0;
    for item in body.split(',') {
        let lead = item.len() - item.trim_start().len();
        out.push(parse_range(item.trim()).map_err(|m| (offset + lead, m))?);
        offset += item.len() + 1;
    }
    Ok(out)
}

/// `N`, `A-B`, `A-B/STEP`, with negative bounds: `-5`, `-5-5`, `-8--4`.
fn parse_range(item: &str) -> Result<Span, String> {
    if item.is_empty() {
        return Err("empty range".into());
    }
    let (base, step) = match item.split_once('/') {
        Some((b, s)) => (b.trim(), Some(s.trim())),
        None => (item, None),
    };
    let step: i128 = match step {
        None => 1,
        Some(s) if !s.is_empty() && s.len() <= MAX_RANGE_DIGITS && is_digits(s) => {
            s.parse().map_err(|_| format!("bad step `{s}`"))?
        }
        Some(s) => return Err(format!("bad step `{s}`")),
    };
    let parts: Vec<&str> = base.split('-').map(str::trim).collect();
    let single = |n: &str| {
        if step != 1 {
            return Err(format!(
                "a step needs a range: `{item}` (write `{n}-LAST/{step}`)"
            ));
        }
        Ok(n.to_owned())
    };
    let (begin, begin_neg, end, end_neg) = match parts.as_slice() {
        [n] => {
            single(n)?;
            (*n, false, *n, false)
        }
        // ClusterShell allows a step on one negative number (`-3/2` is -3).
        ["", n] => (*n, true, *n, true),
        [a, b] => (*a, false, *b, false),
        ["", a, b] => (*a, true, *b, false),
        ["", a, "", b] => (*a, true, *b, true),
        _ => return Err(format!("`{item}` is not a range")),
    };
    for bound in [begin, end] {
        if !is_digits(bound) {
            return Err(format!("`{bound}` is not a number"));
        }
        if above_limit(bound) {
            return Err(format!("`{bound}` is above 10^100"));
        }
    }
    let pad = if begin.len() > 1 && begin.starts_with('0') {
        begin.len()
    } else {
        0
    };
    let end_pad = if end.bytes().any(|b| b != b'0') && end.len() > 1 && end.starts_with('0') {
        end.len()
    } else {
        0
    };
    if (pad > 0 || end_pad > 0) && begin.len() != end.len() {
        return Err(format!(
            "padding mismatch in `{item}`: zero-padded bounds must have the same width"
        ));
    }
    if pad > 0 && begin_neg {
        return Err(format!("`{item}`: negative ranges cannot be zero-padded"));
    }
    let significant = |s: &str| s.trim_start_matches('0').len();
    if significant(begin) > MAX_RANGE_DIGITS || significant(end) > MAX_RANGE_DIGITS {
        if begin == end && !begin_neg {
            return Ok(Span::Literal(begin.to_owned()));
        }
        return Err(format!(
            "`{item}`: a range's bounds may have at most {MAX_RANGE_DIGITS} digits"
        ));
    }
    let value = |s: &str, neg: bool| -> i128 {
        let v: i128 = s.parse().unwrap_or(0);
        if neg {
            -v
        } else {
            v
        }
    };
    let (lo, hi) = (value(begin, begin_neg), value(end, end_neg));
    if lo > hi {
        return Err(format!("reversed range `{item}`: {lo} > {hi}"));
    }
    if step < 1 {
        return Err(format!("bad step in `{item}`"));
    }
    Ok(Span::Range { lo, hi, step, pad })
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Folds names into the shortest range form this module finds: names that differ only in
/// numbers share one term; within a term each numeric field becomes a bracket.
///
/// ```
/// use polyshell_sites::range::fold;
/// assert_eq!(fold(["web01", "web02", "web03", "web05", "web07"]), "web[01-03,05,07]");
/// assert_eq!(fold(["r1n1", "r1n2", "r2n1", "r2n2", "db"]), "db,r[1-2]n[1-2]");
/// ```
pub fn fold<I, S>(names: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    // Names grouped by their text skeleton ("r#n#"): only those can share a term.
    let mut groups: BTreeMap<Vec<String>, BTreeSet<Vec<Num>>> = BTreeMap::new();
    for name in names {
        let (skeleton, nums) = split_numbers(name.as_ref());
        groups.entry(skeleton).or_default().insert(nums);
    }
    let mut terms: Vec<String> = Vec::new();
    for (skeleton, members) in groups {
        let dims = skeleton.len() - 1;
        if dims == 0 {
            terms.push(skeleton[0].clone());
            continue;
        }
        let pads = common_pads(dims, &members);
        let mut items: Vec<Vec<BTreeSet<Num>>> = members
            .into_iter()
            .map(|nums| {
                nums.into_iter()
                    .zip(&pads)
                    .map(|(n, pad)| BTreeSet::from([n.with_pad(pad)]))
                    .collect()
            })
            .collect();
        // Merge along one dimension at a time, last first: items equal in every other
        // dimension become one item with the union of this dimension's values.
        for d in (0..dims).rev() {
            let mut merged: HashMap<Vec<BTreeSet<Num>>, BTreeSet<Num>> = HashMap::new();
            let mut order = Vec::new();
            for mut item in items {
                let values = std::mem::take(&mut item[d]);
                if !merged.contains_key(&item) {
                    order.push(item.clone());
                }
                merged.entry(item).or_default().extend(values);
            }
            items = order
                .into_iter()
                .map(|mut item| {
                    item[d] = merged.remove(&item).unwrap_or_default();
                    item
                })
                .collect();
        }
        for item in items {
            let mut term = skeleton[0].clone();
            for (set, text) in item.iter().zip(&skeleton[1..]) {
                term.push_str(&format_set(set));
                term.push_str(text);
            }
            terms.push(term);
        }
    }
    terms.sort();
    terms.join(",")
}

/// One numeric field of a name: its value and the width it is zero-padded to (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Num {
    pad: usize,
    value: u64,
}

impl Num {
    fn parse(digits: &str) -> Num {
        let pad = if digits.len() > 1 && digits.starts_with('0') {
            digits.len()
        } else {
            0
        };
        Num {
            pad,
            value: digits.parse().unwrap_or(0),
        }
    }

    /// A natural number as wide as a padding used in its dimension prints the same either
    /// way; giving it that padding lets `web09,web10` fold to `web[09-10]`.
    fn with_pad(self, pads: &BTreeSet<usize>) -> Num {
        let digits = self.value.to_string().len();
        if self.pad == 0 && pads.contains(&digits) {
            Num {
                pad: digits,
                ..self
            }
        } else {
            self
        }
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0width$}", self.value, width = self.pad)
    }
}

fn split_numbers(name: &str) -> (Vec<String>, Vec<Num>) {
    let mut skeleton = vec![String::new()];
    let mut nums = Vec::new();
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i > start && i - start <= MAX_DIGITS {
            nums.push(Num::parse(&name[start..i]));
            skeleton.push(String::new());
        } else if i > start {
            if let Some(text) = skeleton.last_mut() {
                text.push_str(&name[start..i]);
            }
        } else {
            let c = name[i..].chars().next().unwrap_or_default();
            if let Some(text) = skeleton.last_mut() {
                text.push(c);
            }
            i += c.len_utf8();
        }
    }
    (skeleton, nums)
}

fn common_pads(dims: usize, members: &BTreeSet<Vec<Num>>) -> Vec<BTreeSet<usize>> {
    let mut pads = vec![BTreeSet::new(); dims];
    for nums in members {
        for (d, n) in nums.iter().enumerate() {
            if n.pad > 0 {
                pads[d].insert(n.pad);
            }
        }
    }
    pads
}

fn format_set(set: &BTreeSet<Num>) -> String {
    if set.len() == 1 {
        return set.iter().next().map(Num::to_string).unwrap_or_default();
    }
    let mut ranges: Vec<(Num, Num)> = Vec::new();
    for &n in set {
        match ranges.last_mut() {
            Some((_, hi)) if hi.pad == n.pad && hi.value + 1 == n.value => *hi = n,
            _ => ranges.push((n, n)),
        }
    }
    let body: Vec<String> = ranges
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    format!("[{}]", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_the_documented_forms() {
        assert_eq!(expand("web[01-20]").unwrap().len(), 20);
        assert_eq!(expand("web[01-20]").unwrap()[19], "web20");
        assert_eq!(expand("db[1-3,7]").unwrap(), ["db1", "db2", "db3", "db7"]);
        assert_eq!(expand("r[1-2]n[1-4]").unwrap().len(), 8);
        assert_eq!(expand("n[1-9/4]").unwrap(), ["n1", "n5", "n9"]);
        assert_eq!(expand("a,b,a").unwrap(), ["a", "b"]);
        assert_eq!(expand("plain").unwrap(), ["plain"]);
    }

    #[test]
    fn errors_say_where() {
        let e = expand("web[01-03").unwrap_err();
        assert_eq!((e.offset, e.message.as_str()), (3, "unclosed `[`"));
        let e = expand("web[5-1]").unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("reversed"), "{e}");
        assert!(expand("w[1-x]").unwrap_err().message.contains("`x`"));
        assert!(expand("w[1-10000000]")
            .unwrap_err()
            .message
            .contains("more than"));
        assert!(expand("a,,b").is_err());
        assert!(expand("a]").is_err());
        assert!(expand("a[]").is_err());
        assert!(expand("a[1/0]").is_err());
    }

    #[test]
    fn folds_mixed_padding_and_dimensions() {
        assert_eq!(fold(expand("web[01-10]").unwrap()), "web[01-10]");
        assert_eq!(fold(["db1", "db2", "db10"]), "db[1-2,10]");
        assert_eq!(fold(expand("r[1-3]n[1-4]").unwrap()), "r[1-3]n[1-4]");
        assert_eq!(fold(["x"]), "x");
        assert_eq!(fold(Vec::<String>::new()), "");
    }
}
