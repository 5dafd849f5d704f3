//! The response jobs: the steps run for a ban made (the response to a scanner, a CrowdSec
//! decision's kill commands) and for a ban lifted (its undo steps).
//!
//! At most [`MAX_PARALLEL_JOBS`] run at once, and the jobs of one address run one after
//! the other, in the order their bans were made and lifted: the undo of an unbanned host
//! (`route del`, its hosts.deny line removed) ends before the kill commands of the host's
//! next ban start, never after them, where it would undo the new ban's route and line.
//!
//! A job takes its place in its address's line when it is asked for ([`Jobs::line_up`],
//! with the ban store's change that calls for it), and a slot of the pool once the job
//! before it in that line has one ([`Place::seat`]): a job holding a slot waits only for
//! jobs holding one, so the pool cannot fill with jobs that wait for jobs without one.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Response jobs that may run at once.
pub(super) const MAX_PARALLEL_JOBS: usize = 16;
/// How often a stop looks whether the jobs have ended.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Where a job is: waiting for a slot, or holding one. A job that ended (or was dropped)
/// is seen by the job after it as its closed channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Waiting,
    Seated,
}

/// The pool and each address's line.
pub(super) struct Jobs {
    pool: Arc<Semaphore>,
    lines: Mutex<Lines>,
}

#[derive(Default)]
struct Lines {
    next_id: u64,
    /// The last job asked for, per address with a job not yet ended.
    last: HashMap<IpAddr, (u64, watch::Receiver<Stage>)>,
}

impl Jobs {
    pub(super) fn new() -> Arc<Jobs> {
        Arc::new(Jobs {
            pool: Arc::new(Semaphore::new(MAX_PARALLEL_JOBS)),
            lines: Mutex::new(Lines::default()),
        })
    }

    /// Puts a job for `ip` at the end of its line, now: call it where the ban is made or
    /// lifted, before spawning the job.
    pub(super) fn line_up(self: &Arc<Self>, ip: IpAddr) -> Place {
        let (stage, watched) = watch::channel(Stage::Waiting);
        let mut lines = self.lines.lock().expect("jobs lock");
        let id = lines.next_id;
        lines.next_id += 1;
        let before = lines.last.insert(ip, (id, watched)).map(|(_, rx)| rx);
        Place {
            jobs: self.clone(),
            ip,
            id,
            stage,
            before,
        }
    }

    /// Waits, at most `limit`, for every job lined up to end (those running, those
    /// waiting for a slot, and those waiting for the job before them to get one); no job
    /// starts after it returned (the daemon stops).
    pub(super) async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        // A line's last job ends after every other job of its line: no line left, no
        // job left.
        while !self.lines.lock().expect("jobs lock").last.is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        self.pool.close();
    }

    /// Jobs not yet ended, with a place in a line (for tests).
    #[cfg(test)]
    fn lines(&self) -> usize {
        self.lines.lock().expect("jobs lock").last.len()
    }
}

/// A job's place in its address's line, until it ends (dropped).
pub(super) struct Place {
    jobs: Arc<Jobs>,
    ip: IpAddr,
    id: u64,
    stage: watch::Sender<Stage>,
    /// The job before this one in the line, if it had not ended when this one lined up.
    before: Option<watch::Receiver<Stage>>,
}

impl Place {
    /// Waits for a slot of the pool, asked for once the job before holds one (the pool
    /// gives slots in the order asked); `None` once the daemon stops.
    pub(super) async fn seat(mut self) -> Option<Seated> {
        if let Some(before) = self.before.as_mut() {
            // Closed: the job before ended.
            let _ = before.wait_for(|s| *s >= Stage::Seated).await;
        }
        let slot = self.jobs.pool.clone().acquire_owned().await.ok()?;
        self.stage.send_replace(Stage::Seated);
        Some(Seated {
            place: self,
            _slot: slot,
        })
    }

    /// [`Place::seat`], then [`Seated::after_the_job_before`]: for a job whose first
    /// step runs a command. Its slot is held until the `Seated` is dropped.
    pub(super) async fn turn(self) -> Option<Seated> {
        let mut seated = self.seat().await?;
        seated.after_the_job_before().await;
        Some(seated)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut lines = self.jobs.lines.lock().expect("jobs lock");
        if lines
            .last
            .get(&self.ip)
            .is_some_and(|(id, _)| *id == self.id)
        {
            lines.last.remove(&self.ip);
        }
        // `stage` is dropped after this: the job after this one goes on.
    }
}

/// A job holding a slot of the pool, until it ends (dropped).
pub(super) struct Seated {
    place: Place,
    _slot: OwnedSemaphorePermit,
}

impl Seated {
    /// Waits for the job before this one in its address's line to end: call it before
    /// the first step that runs a command.
    pub(super) async fn after_the_job_before(&mut self) {
        if let Some(mut before) = self.place.before.take() {
            let _ = before.wait_for(|_| false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    /// Runs a job that logs `name` at its start and its end, with a pause between.
    fn job(
        jobs: &Arc<Jobs>,
        log: &Arc<StdMutex<Vec<String>>>,
        at: IpAddr,
        name: &str,
    ) -> tokio::task::JoinHandle<()> {
        let place = jobs.line_up(at);
        let log = log.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let Some(mut seated) = place.seat().await else {
                return;
            };
            seated.after_the_job_before().await;
            log.lock().unwrap().push(format!("{name} start"));
            tokio::time::sleep(Duration::from_millis(30)).await;
            log.lock().unwrap().push(format!("{name} end"));
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_address_jobs_run_in_the_order_lined_up() {
        let jobs = Jobs::new();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let handles: Vec<_> = ["undo", "kill", "undo again"]
            .iter()
            .map(|n| job(&jobs, &log, ip(1), n))
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(
            *log.lock().unwrap(),
            [
                "undo start",
                "undo end",
                "kill start",
                "kill end",
                "undo again start",
                "undo again end"
            ]
        );
        assert_eq!(jobs.lines(), 0, "an ended line is forgotten");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn other_addresses_do_not_wait() {
        let jobs = Jobs::new();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let a = job(&jobs, &log, ip(1), "a");
        let b = job(&jobs, &log, ip(2), "b");
        a.await.unwrap();
        b.await.unwrap();
        let log = log.lock().unwrap();
        let starts = log.iter().take(2).filter(|l| l.ends_with("start")).count();
        assert_eq!(starts, 2, "both ran at once: {log:?}");
    }

    /// A pool of one slot, a later job of an address spawned first: the earlier job still
    /// gets the slot first, and neither waits for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_full_pool_cannot_hold_a_job_waiting_for_one_without_a_slot() {
        let jobs = Jobs::new();
        let all = jobs
            .pool
            .clone()
            .acquire_many_owned(MAX_PARALLEL_JOBS as u32 - 1)
            .await
            .unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let first = jobs.line_up(ip(1));
        let later = job(&jobs, &log, ip(1), "later");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let log2 = log.clone();
        let first = tokio::spawn(async move {
            let mut seated = first.seat().await.unwrap();
            seated.after_the_job_before().await;
            log2.lock().unwrap().push("first".to_string());
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            first.await.unwrap();
            later.await.unwrap();
        })
        .await
        .expect("no job waits for ever");
        drop(all);
        assert_eq!(*log.lock().unwrap(), ["first", "later start", "later end"]);
    }

    /// A stop while the pool is full waits for a job lined up behind one still waiting
    /// for a slot (an undo behind a kill): it asks for its slot only after the stop began.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_stop_waits_for_a_job_behind_one_waiting_for_a_slot() {
        let jobs = Jobs::new();
        let all = jobs
            .pool
            .clone()
            .acquire_many_owned(MAX_PARALLEL_JOBS as u32)
            .await
            .unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let kill = job(&jobs, &log, ip(1), "kill");
        let undo = job(&jobs, &log, ip(1), "undo");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stop = {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.drain(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(all);
        stop.await.unwrap();
        kill.await.unwrap();
        undo.await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["kill start", "kill end", "undo start", "undo end"]
        );
    }

    #[tokio::test]
    async fn no_job_starts_after_a_drain() {
        let jobs = Jobs::new();
        jobs.drain(Duration::from_secs(1)).await;
        assert!(jobs.line_up(ip(1)).seat().await.is_none());
    }
}
