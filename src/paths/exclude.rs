//! [`Exclude`]: patterns of relative paths a walk leaves out (`hash-tree --exclude`).

/// Patterns of paths to leave out of a walk, matched against each entry's path relative to the
/// root (`/`-separated bytes). An excluded directory is never opened, so nothing below it is read.
///
/// A pattern without `/` matches an entry's name at any depth (`.git`, `target`, `*.o`); one
/// with a `/` matches the whole relative path (`build/out`, `docs/*.pdf`), and a leading `/`
/// anchors a name to the root (`/target`: only the root's `target`). `*` matches any run of bytes
/// other than `/`, `?` any one byte other than `/`; every other byte matches itself. A trailing
/// `/` is ignored.
///
/// ```
/// use warmshard::paths::Exclude;
/// let exclude = Exclude::new([".git", "*.o", "/target", "docs/*.pdf"]);
/// assert!(exclude.matches(b"src/.git"));
/// assert!(exclude.matches(b"a/b/main.o"));
/// assert!(exclude.matches(b"target") && !exclude.matches(b"sub/target"));
/// assert!(exclude.matches(b"docs/manual.pdf") && !exclude.matches(b"docs/old/manual.pdf"));
/// assert!(!exclude.matches(b"src/main.rs"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Exclude {
    /// (pattern, whether it matches the whole relative path rather than a name).
    patterns: Vec<(Vec<u8>, bool)>,
}

impl Exclude {
    /// The exclusions of `patterns` (see the type's docs).
    pub fn new<P: AsRef<[u8]>>(patterns: impl IntoIterator<Item = P>) -> Exclude {
        let patterns = patterns
            .into_iter()
            .filter_map(|pattern| {
                let mut pattern = pattern.as_ref();
                while let Some(rest) = pattern.strip_suffix(b"/") {
                    pattern = rest;
                }
                let anchored = pattern.starts_with(b"/");
                let pattern = pattern.strip_prefix(b"/").unwrap_or(pattern);
                (!pattern.is_empty())
                    .then(|| (pattern.to_vec(), anchored || pattern.contains(&b'/')))
            })
            .collect();
        Exclude { patterns }
    }

    /// True when there is no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the entry at `rel` (relative to the root, `/`-separated) is excluded.
    pub fn matches(&self, rel: &[u8]) -> bool {
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        self.patterns
            .iter()
            .any(|(pattern, whole)| glob(pattern, if *whole { rel } else { name }))
    }
}

/// `*` and `?` matching that never crosses a `/` (iterative, with one backtrack point: linear
/// in practice, never exponential).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') if text[t] != b'/' => {
                p += 1;
                t += 1;
                continue;
            }
            Some(&c) if c != b'?' && c == text[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        // Mismatch: let the last `*` take one more byte, unless that byte is a `/`.
        match star {
            Some((star_p, star_t)) if text[star_t] != b'/' => {
                star = Some((star_p, star_t + 1));
                p = star_p + 1;
                t = star_t + 1;
            }
            _ => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_within_one_component() {
        for (pattern, text, expected) in [
            (&b"*.o"[..], &b"main.o"[..], true),
            (b"*.o", b"main.c", false),
            (b"*", b"a/b", false),
            (b"a/*", b"a/b", true),
            (b"a/*", b"a/b/c", false),
            (b"?", b"a", true),
            (b"?", b"/", false),
            (b"a*b*c", b"axxbyyc", true),
            (b"a*b*c", b"axxbyy", false),
            (b"**", b"", true),
            (b"x", b"", false),
            (b"f?o*", b"foobar", true),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern:?} {text:?}");
        }
    }
}
