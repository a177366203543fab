//! Host ranges in ClusterShell's nodeset syntax: `web[01-20]`, `db[1-3,7]`, `r[1-2]n[1-4]`,
//! `n[1-9/2]`, and folding names back into that form for reports.
//!
//! Expansion: a pattern is a comma-separated list of terms (commas inside brackets belong to
//! the bracket); each bracket is a comma-separated list of `N`, `A-B` or `A-B/STEP`; several
//! brackets in one term make a cartesian product, leftmost varying slowest. A bound written
//! with a leading zero (`01`) pads every number of its range to that width.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The most names one pattern may expand to: a typo like `web[1-1000000000]` is an error,
/// not an out-of-memory. Counted before duplicates are removed (`n[1-9,1-9]` counts 18),
/// from the parsed pattern alone, so rejecting costs no more than reading the pattern.
pub const MAX_EXPANSION: usize = 1_000_000;

/// Numbers longer than this are text, not a range dimension (they would overflow `u64`).
const MAX_DIGITS: usize = 18;

/// A pattern that is not a valid host range; `offset` is the byte offset in the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {} of `{pattern}`)", offset + 1)]
pub struct RangeError {
    pub pattern: String,
    pub offset: usize,
    pub message: String,
}

/// Expands `pattern` into its names, in order, without duplicates.
///
/// ```
/// use polyshell_sites::range::expand;
/// assert_eq!(expand("web[01-03]").unwrap(), ["web01", "web02", "web03"]);
/// assert_eq!(expand("db[1-2,7]").unwrap(), ["db1", "db2", "db7"]);
/// assert_eq!(expand("r[1-2]n[1-2]").unwrap(), ["r1n1", "r1n2", "r2n1", "r2n2"]);
/// ```
pub fn expand(pattern: &str) -> Result<Vec<String>, RangeError> {
    let err = |offset: usize, message: String| RangeError {
        pattern: pattern.to_owned(),
        offset,
        message,
    };
    // First the whole pattern is parsed and counted, then names are made: a pattern is
    // rejected in time and memory proportional to its own length, never to its expansion.
    let mut terms = Vec::new();
    let mut total: u64 = 0;
    for (start, term) in split_terms(pattern).map_err(|(o, m)| err(o, m))? {
        if term.trim().is_empty() {
            return Err(err(start, "empty name".into()));
        }
        let parts = parse_term(term).map_err(|(o, m)| err(start + o, m))?;
        let count = parts.iter().try_fold(1u64, |acc, p| match p {
            Part::Text(_) => Some(acc),
            Part::Numbers(specs) => acc.checked_mul(count_of(specs)?),
        });
        total = match count.and_then(|c| total.checked_add(c)) {
            Some(t) if t <= MAX_EXPANSION as u64 => t,
            _ => {
                return Err(err(
                    start,
                    format!("expands to more than {MAX_EXPANSION} names"),
                ))
            }
        };
        terms.push(parts);
    }
    let mut names = Vec::with_capacity(total as usize);
    let mut seen = std::collections::HashSet::with_capacity(total as usize);
    for parts in &terms {
        product(parts, &mut String::new(), &mut |name| {
            if seen.insert(name.to_owned()) {
                names.push(name.to_owned());
            }
        });
    }
    Ok(names)
}

/// Whether `name` contains range syntax (and so may stand for more than one name).
pub fn is_pattern(name: &str) -> bool {
    name.contains(['[', ',', ']'])
}

enum Part {
    Text(String),
    /// The ranges of one bracket, in order (names are made from them only once the whole
    /// pattern is known to be within budget).
    Numbers(Vec<Span>),
}

/// `lo` to `hi` by `step`, each number padded to `pad` digits.
struct Span {
    lo: u64,
    hi: u64,
    step: u64,
    pad: usize,
}

/// How many numbers a bracket stands for (an upper bound when its ranges overlap).
fn count_of(spans: &[Span]) -> Option<u64> {
    spans
        .iter()
        .try_fold(0u64, |acc, s| acc.checked_add((s.hi - s.lo) / s.step + 1))
}

fn split_terms(pattern: &str) -> Result<Vec<(usize, &str)>, (usize, String)> {
    let mut terms = Vec::new();
    let (mut depth, mut start, mut open_at) = (0usize, 0usize, 0usize);
    for (i, c) in pattern.char_indices() {
        match c {
            '[' if depth > 0 => return Err((i, "nested `[`".into())),
            '[' => {
                depth = 1;
                open_at = i;
            }
            ']' if depth == 0 => return Err((i, "`]` without `[`".into())),
            ']' => depth = 0,
            ',' if depth == 0 => {
                terms.push((start, &pattern[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err((open_at, "unclosed `[`".into()));
    }
    terms.push((start, &pattern[start..]));
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Vec<Part>, (usize, String)> {
    let mut parts = Vec::new();
    let mut rest = term;
    let mut offset = 0;
    while let Some(open) = rest.find('[') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .unwrap_or(rest.len());
        let body = &rest[open + 1..close];
        parts.push(Part::Numbers(
            parse_bracket(body).map_err(|(o, m)| (offset + open + 1 + o, m))?,
        ));
        offset += close + 1;
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn parse_bracket(body: &str) -> Result<Vec<Span>, (usize, String)> {
    if body.is_empty() {
        return Err((0, "empty `[]`".into()));
    }
    let mut out = Vec::new();
    let mut offset = 0;
    for item in body.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let lo_n = number(lo).ok_or((offset, format!("`{lo}` is not a number")))?;
        let hi_at = offset + range.len() - hi.len();
        let hi_n = number(hi).ok_or((hi_at, format!("`{hi}` is not a number")))?;
        if hi_n < lo_n {
            return Err((offset, format!("reversed range `{range}`: {lo_n} > {hi_n}")));
        }
        let step = match step {
            None => 1,
            Some(s) => match number(s) {
                Some(n) if n > 0 => n,
                _ => return Err((offset + range.len() + 1, format!("bad step `{s}`"))),
            },
        };
        if (hi_n - lo_n) / step >= MAX_EXPANSION as u64 {
            return Err((
                offset,
                format!("`{range}` expands to more than {MAX_EXPANSION} names"),
            ));
        }
        let pad = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        out.push(Span {
            lo: lo_n,
            hi: hi_n,
            step,
            pad,
        });
        offset += item.len() + 1;
    }
    Ok(out)
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn product(parts: &[Part], prefix: &mut String, emit: &mut dyn FnMut(&str)) {
    let Some((first, rest)) = parts.split_first() else {
        emit(prefix);
        return;
    };
    let len = prefix.len();
    match first {
        Part::Text(t) => {
            prefix.push_str(t);
            product(rest, prefix, emit);
        }
        Part::Numbers(spans) => {
            for span in spans {
                let mut v = span.lo;
                while v <= span.hi {
                    use std::fmt::Write as _;
                    let _ = write!(prefix, "{v:0pad$}", pad = span.pad);
                    product(rest, prefix, emit);
                    prefix.truncate(len);
                    v += span.step;
                }
            }
        }
    }
    prefix.truncate(len);
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
