//! Unique, short names for throwaway kernel objects.
//!
//! Tests run in parallel (several test binaries, several threads each), so
//! every name embeds the process id and a per-process counter. Interface
//! names must also fit Linux's `IFNAMSIZ` (15 usable bytes), hence the
//! compact base-36 encoding.

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix shared by every network namespace this crate creates, so stale
/// ones can be recognised (see [`crate::reap_stale`]).
pub const NETNS_PREFIX: &str = "trtb-";

/// Maximum length of a string returned by [`unique_suffix`].
///
/// With it an interface name prefix of up to 7 bytes still fits into the
/// 15 bytes Linux allows for interface names.
pub const SUFFIX_LEN: usize = 8;

/// One counter for the whole process: names stay unique across threads.
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_counter() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Encodes `value` in lower-case base 36, left-padded with `0` to `width`
/// digits; only the low `width` digits are kept.
fn base36(mut value: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        // The index is always < 36, so the cast cannot truncate.
        *slot = DIGITS[(value % 36) as usize];
        value /= 36;
    }
    // Only ASCII digits were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// A short suffix (exactly [`SUFFIX_LEN`] lower-case alphanumerics) that is
/// unique among live processes on this machine: e.g. bridge names
/// `format!("trb-{}", unique_suffix())` stay within 15 bytes.
///
/// Fixed-width fields (5 digits of pid, 3 of counter) avoid the ambiguity of
/// a plain concatenation (pid 1 + counter 23 vs pid 12 + counter 3). The pid
/// field covers `pid_max` up to 2^22; the counter wraps after 46656 names,
/// far more than one test process keeps alive at once.
pub fn unique_suffix() -> String {
    suffix_for(std::process::id(), next_counter())
}

fn suffix_for(pid: u32, counter: u32) -> String {
    format!(
        "{}{}",
        base36(u64::from(pid), 5),
        base36(u64::from(counter), 3)
    )
}

/// A fresh network namespace name `trtb-<tag>-<pid>-<counter>`.
///
/// The pid is kept in decimal so [`crate::reap_stale`] can tell whether the
/// creator is still alive. `tag` is sanitised to `[A-Za-z0-9_]` (other bytes
/// become `_`) and cut to 16 bytes, so the name is always a valid, short file
/// name under `/run/netns`.
pub fn netns_name(tag: &str) -> String {
    format!(
        "{NETNS_PREFIX}{}-{}-{}",
        sanitize_tag(tag),
        std::process::id(),
        next_counter()
    )
}

fn sanitize_tag(tag: &str) -> String {
    let clean: String = tag
        .chars()
        .take(16)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "ns".to_owned()
    } else {
        clean
    }
}

/// Extracts the creator pid from a name made by [`netns_name`], or `None`
/// for names this crate did not make.
pub(crate) fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    // Tags never contain '-', so the layout is exactly tag-pid-counter.
    let mut parts = rest.split('-');
    let (_tag, pid, counter) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || counter.parse::<u32>().is_err() {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn suffix_has_fixed_length_and_charset() {
        for _ in 0..100 {
            let s = unique_suffix();
            assert_eq!(s.len(), SUFFIX_LEN, "{s}");
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        }
        // Worst case pid still fits the fixed width (pid_max is at most 2^22).
        assert_eq!(suffix_for(1 << 22, 46655).len(), SUFFIX_LEN);
    }

    #[test]
    fn suffixes_are_unique_and_fit_ifnames() {
        let set: HashSet<String> = (0..1000).map(|_| unique_suffix()).collect();
        assert_eq!(set.len(), 1000);
        assert!(format!("trb-{}", unique_suffix()).len() <= 15);
    }

    #[test]
    fn fixed_width_avoids_concatenation_ambiguity() {
        assert_ne!(suffix_for(1, 23), suffix_for(12, 3));
        assert_eq!(suffix_for(0, 0), "00000000");
        assert_eq!(suffix_for(35, 36), "0000z010");
    }

    #[test]
    fn netns_names_are_unique_and_parseable() {
        let a = netns_name("node");
        let b = netns_name("node");
        assert_ne!(a, b);
        assert!(a.starts_with("trtb-node-"));
        assert_eq!(creator_pid(&a), Some(std::process::id()));
    }

    #[test]
    fn netns_tag_is_sanitised() {
        let n = netns_name("a b/c-d");
        assert!(n.starts_with("trtb-a_b_c_d-"), "{n}");
        assert!(netns_name("").starts_with("trtb-ns-"));
        let long = netns_name(&"x".repeat(100));
        assert!(long.len() < 40, "{long}");
        assert_eq!(creator_pid(&long), Some(std::process::id()));
    }

    #[test]
    fn foreign_names_have_no_creator() {
        assert_eq!(creator_pid("cni-1234"), None);
        assert_eq!(creator_pid("trtb-x-12"), None);
        assert_eq!(creator_pid("trtb-x-12-3-4"), None);
        assert_eq!(creator_pid("trtb-x-abc-3"), None);
    }
}
