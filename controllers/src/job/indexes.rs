//! Completion indexes of Indexed Jobs: the compressed interval form upstream writes to
//! `status.completedIndexes` / `status.failedIndexes` ("0-2,5"), and the index a pod carries.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;

/// The annotation (and, since PodIndexLabel, the label) holding a pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Counted failures of the index before this pod (backoffLimitPerIndex).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Failures of the index before this pod that a pod failure policy ignored.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// The variable every container of an Indexed Job's pods gets.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// Upstream's `names.MaxGeneratedNameLength` (63 minus the 5 random characters).
const MAX_GENERATED_NAME: usize = 58;

/// A set of indexes as sorted, disjoint, non-adjacent closed intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(i32, i32)>);

impl Intervals {
    /// Upstream's `parseIndexesFromString`: corrupt pieces are skipped and indexes at or past
    /// `completions` dropped, so a tampered status cannot make the Job count phantom indexes.
    pub fn parse(s: &str, completions: i32) -> Intervals {
        let mut out = Vec::new();
        for piece in s.split(',').filter(|p| !p.is_empty()) {
            let mut limits = piece.splitn(2, '-');
            let Some(Ok(first)) = limits.next().map(str::parse::<i32>) else {
                continue;
            };
            let last = match limits.next().map(str::parse::<i32>) {
                None => first,
                Some(Ok(last)) => last.min(completions - 1),
                Some(Err(_)) => continue,
            };
            if first < 0 || first >= completions || last < first {
                continue;
            }
            out.push((first, last));
        }
        Intervals::normalized(out)
    }

    fn normalized(mut v: Vec<(i32, i32)>) -> Intervals {
        v.sort_unstable();
        let mut out: Vec<(i32, i32)> = Vec::with_capacity(v.len());
        for (first, last) in v {
            match out.last_mut() {
                Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => out.push((first, last)),
            }
        }
        Intervals(out)
    }

    pub fn with(&self, indexes: impl IntoIterator<Item = i32>) -> Intervals {
        let mut v = self.0.clone();
        v.extend(indexes.into_iter().map(|i| (i, i)));
        Intervals::normalized(v)
    }

    pub fn union(&self, other: &Intervals) -> Intervals {
        let mut v = self.0.clone();
        v.extend_from_slice(&other.0);
        Intervals::normalized(v)
    }

    pub fn has(&self, ix: i32) -> bool {
        self.0
            .iter()
            .any(|&(first, last)| first <= ix && ix <= last)
    }

    pub fn total(&self) -> i32 {
        self.0.iter().map(|&(first, last)| last - first + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many indexes the two sets share.
    pub fn overlap(&self, other: &Intervals) -> i32 {
        let mut n = 0;
        for &(a1, a2) in &self.0 {
            for &(b1, b2) in &other.0 {
                n += (a2.min(b2) - a1.max(b1) + 1).max(0);
            }
        }
        n
    }

    /// The first `count` indexes below `completions` not in `self`.
    pub fn first_missing(&self, count: usize, completions: i32) -> Vec<i32> {
        let mut out = Vec::with_capacity(count);
        let mut candidate = 0;
        for &(first, last) in &self.0 {
            while candidate < completions && out.len() < count && candidate < first {
                out.push(candidate);
                candidate += 1;
            }
            candidate = candidate.max(last + 1);
        }
        while candidate < completions && out.len() < count {
            out.push(candidate);
            candidate += 1;
        }
        out
    }
}

/// Upstream's format: a pair of neighbours is written "3,4", longer runs "0-2".
impl fmt::Display for Intervals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(first, last)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match last - first {
                0 => write!(f, "{first}")?,
                1 => write!(f, "{first},{last}")?,
                _ => write!(f, "{first}-{last}")?,
            }
        }
        Ok(())
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The pod's completion index, if it has a valid one below `completions`.
pub fn pod_index(pod: &Pod, completions: i32) -> Option<i32> {
    annotation(pod, COMPLETION_INDEX)
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|ix| (0..completions).contains(ix))
}

/// (counted, ignored) failures of the pod's index before it, from its annotations; a
/// missing or bad value is 0, as upstream.
pub fn failure_counts(pod: &Pod) -> (i32, i32) {
    let read = |key| {
        annotation(pod, key)
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|n| *n >= 0)
            .unwrap_or(0)
    };
    (read(INDEX_FAILURE_COUNT), read(INDEX_IGNORED_FAILURE_COUNT))
}

/// `<job>-<index>-` cut to fit a generated name, as upstream's `podGenerateNameWithIndex`.
pub fn generate_name(job: &str, ix: i32) -> String {
    let suffix = format!("-{ix}-");
    let mut prefix = format!("{job}{suffix}");
    if prefix.len() > MAX_GENERATED_NAME {
        let mut keep = MAX_GENERATED_NAME - suffix.len();
        while !job.is_char_boundary(keep) {
            keep -= 1;
        }
        prefix = format!("{}{suffix}", &job[..keep]);
    }
    prefix
}

/// Pods per index, for finding duplicates.
pub fn by_index<'a>(pods: &[&'a Pod], completions: i32) -> BTreeMap<i32, Vec<&'a Pod>> {
    let mut m: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        if let Some(ix) = pod_index(p, completions) {
            m.entry(ix).or_default().push(p);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_use_upstreams_compressed_form() {
        let s = Intervals::default().with([5, 0, 2, 1, 7, 8]);
        assert_eq!(s.to_string(), "0-2,5,7,8");
        assert_eq!(s.total(), 6);
        assert!(s.has(1) && s.has(8) && !s.has(6));
        assert_eq!(Intervals::parse("0-2,5,7,8", 10), s);
        assert_eq!(Intervals::default().to_string(), "");
    }

    #[test]
    fn parse_drops_corrupt_and_out_of_range_indexes() {
        assert_eq!(Intervals::parse("0,x,2-y,3-9", 5).to_string(), "0,3,4");
        assert_eq!(Intervals::parse("7", 5).total(), 0);
        assert_eq!(Intervals::parse("", 5).total(), 0);
    }

    #[test]
    fn first_missing_skips_taken_indexes() {
        let taken = Intervals::parse("0,2-3", 10);
        assert_eq!(taken.first_missing(3, 10), vec![1, 4, 5]);
        assert_eq!(taken.first_missing(5, 5), vec![1, 4]);
        assert_eq!(Intervals::default().first_missing(2, 3), vec![0, 1]);
    }

    #[test]
    fn overlap_counts_shared_indexes() {
        let a = Intervals::parse("0-4,8", 10);
        let b = Intervals::parse("3-8", 10);
        assert_eq!(a.overlap(&b), 3);
    }

    #[test]
    fn generate_name_keeps_the_index_when_cut() {
        assert_eq!(generate_name("work", 3), "work-3-");
        let long = "a".repeat(70);
        let g = generate_name(&long, 12);
        assert_eq!(g.len(), MAX_GENERATED_NAME);
        assert!(g.ends_with("-12-"));
    }
}
