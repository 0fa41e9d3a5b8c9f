//! How a batch writer (the cmdexec results' writer, the audit appender)
//! gathers its batches and spaces its commits under load. A commit rewrites
//! every page its rows touched and syncs the file, so under load each should
//! carry many changes: after a busy commit, what arrives within the spacing
//! joins the next one. The spacing grows with the last batch
//! (`SPACING_PER_CHANGE` a change, up to `MAX_SPACING`), so a steady trickle
//! keeps its latency low and a flood settles at the longest spacing: its
//! batches grow with the spacing, and the spacing with its batches. A change
//! that comes after a quiet commit commits at once.
//!
//! Measured on a 10,000-node fan-out: 10 ms apart, a commit carried about 4
//! nodes; 50 ms apart, about 15, with a quarter of the syncs and the writer
//! thread's CPU per node 0.55×.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest wait between two commits while changes keep coming.
pub(crate) const MAX_SPACING: Duration = Duration::from_millis(50);
/// The wait after a busy commit, for each change it carried.
const SPACING_PER_CHANGE: Duration = Duration::from_micros(2_500);
/// A batch this large says changes keep coming.
pub(crate) const BUSY_BATCH: usize = 4;

/// How long after a commit of `changes` the next one may start: none after a
/// quiet commit; after a busy one, longer the more it carried (4 changes:
/// 10 ms; 20 or more: `MAX_SPACING`).
pub(crate) fn spacing(changes: usize) -> Option<Duration> {
    (changes >= BUSY_BATCH).then(|| {
        SPACING_PER_CHANGE
            .saturating_mul(u32::try_from(changes).unwrap_or(u32::MAX))
            .min(MAX_SPACING)
    })
}

/// Where a batch writer takes its changes from: one queue, or several taken
/// in turn (the audit appender's).
pub(crate) trait Queue<T> {
    /// What is queued now, if anything.
    fn try_next(&mut self) -> Option<T>;
    /// The next change; `None` once every sender is gone.
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send;
}

impl<T: Send> Queue<T> for mpsc::Receiver<T> {
    fn try_next(&mut self) -> Option<T> {
        self.try_recv().ok()
    }

    fn next(&mut self) -> impl Future<Output = Option<T>> + Send {
        self.recv()
    }
}

/// Adds to `batch` (which holds the first change) what is queued, up to
/// `max`; with a `due` time (the writer is busy), also what arrives until
/// then, unless the batch holds a change someone waits for (`waited`): that
/// one commits as soon as it can.
pub(crate) async fn gather<T>(
    rx: &mut impl Queue<T>,
    batch: &mut Vec<T>,
    max: usize,
    due: Option<Instant>,
    waited: impl Fn(&T) -> bool,
) {
    let mut due = due.filter(|_| !batch.iter().any(&waited));
    while batch.len() < max {
        let op = match (rx.try_next(), due) {
            (Some(op), _) => op,
            (None, None) => break,
            (None, Some(at)) => match tokio::time::timeout_at(at, rx.next()).await {
                Ok(Some(op)) => op,
                _ => break,
            },
        };
        if waited(&op) {
            due = None;
        }
        batch.push(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_grows_with_the_last_batch_up_to_its_longest() {
        assert_eq!(spacing(0), None);
        assert_eq!(
            spacing(BUSY_BATCH - 1),
            None,
            "a quiet commit: the next at once"
        );
        assert_eq!(spacing(BUSY_BATCH), Some(Duration::from_millis(10)));
        assert_eq!(spacing(10), Some(Duration::from_millis(25)));
        assert_eq!(spacing(20), Some(MAX_SPACING));
        assert_eq!(spacing(512), Some(MAX_SPACING));
        assert_eq!(spacing(usize::MAX), Some(MAX_SPACING));
    }

    #[tokio::test]
    async fn a_busy_writer_gathers_until_due_and_a_quiet_one_takes_what_is_queued() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..3 {
            tx.send(i).await.unwrap();
        }
        let mut batch = vec![];
        gather(&mut rx, &mut batch, 16, None, |_| false).await;
        assert_eq!(batch, [0, 1, 2], "quiet: what is queued, no wait");
        let t0 = Instant::now();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            late.send(3).await.unwrap();
        });
        let mut batch = vec![];
        gather(
            &mut rx,
            &mut batch,
            16,
            Some(t0 + Duration::from_millis(100)),
            |_| false,
        )
        .await;
        assert_eq!(batch, [3], "busy: what arrives before the due time joins");
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "and it waits until then"
        );
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let mut batch = vec![];
        gather(
            &mut rx,
            &mut batch,
            2,
            Some(Instant::now() + MAX_SPACING),
            |_| false,
        )
        .await;
        assert_eq!(batch, [0, 1], "never more than the batch's size");
        while rx.try_recv().is_ok() {}
    }

    #[tokio::test]
    async fn a_change_someone_waits_for_is_not_held_for_the_spacing() {
        let (tx, mut rx) = mpsc::channel(16);
        let waited = |v: &i32| *v < 0;
        // Arriving while a busy writer gathers: the batch goes at once.
        let t0 = Instant::now();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            late.send(-1).await.unwrap();
        });
        let mut batch = vec![1];
        gather(
            &mut rx,
            &mut batch,
            16,
            Some(t0 + Duration::from_secs(30)),
            waited,
        )
        .await;
        assert_eq!(batch, [1, -1]);
        assert!(t0.elapsed() < Duration::from_secs(30), "not held until due");
        // Queued behind others, or the first of its batch: the same.
        tx.send(2).await.unwrap();
        tx.send(-2).await.unwrap();
        let mut batch = vec![];
        gather(
            &mut rx,
            &mut batch,
            16,
            Some(Instant::now() + Duration::from_secs(30)),
            waited,
        )
        .await;
        assert_eq!(batch, [2, -2]);
        let mut batch = vec![-3];
        let t1 = Instant::now();
        gather(
            &mut rx,
            &mut batch,
            16,
            Some(t1 + Duration::from_secs(30)),
            waited,
        )
        .await;
        assert_eq!(batch, [-3]);
        assert!(t1.elapsed() < Duration::from_secs(30));
    }
}
