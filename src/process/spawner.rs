//! One thread that does every fork/exec, for the daemon's whole life.
//!
//! Two reasons. `PR_SET_PDEATHSIG` fires when the *thread* that forked the
//! child exits, not the process, and tokio's blocking pool retires idle
//! threads: a child spawned there could be killed ten seconds later for no
//! reason. And fork/exec blocks; on an async worker it would stall every
//! request while many children start.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the spawner thread; the thread ends when every handle is
/// dropped, after the jobs already queued.
#[derive(Debug, Clone)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the thread, inside `runtime` so that tokio process handles
    /// created there belong to it.
    ///
    /// # Panics
    /// The OS refused to create a thread.
    pub fn start(runtime: tokio::runtime::Handle) -> Spawner {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mcpvisor-spawner".into())
            .spawn(move || {
                let _entered = runtime.enter();
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .expect("spawning the spawner thread");
        Spawner { jobs }
    }

    /// Runs `job` on the spawner thread and returns its result.
    ///
    /// # Panics
    /// The spawner thread has died (a job panicked).
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(job());
            }))
            .expect("the spawner thread is alive");
        result.await.expect("the spawner thread finished the job")
    }
}
