//! A deterministic watch channel for the simulated runtime: wakers are woken in the order
//! they registered, and nothing draws random numbers.

use std::future::poll_fn;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::task::Poll;
use std::task::Waker;

use openraft_rt::watch::RecvError;
use openraft_rt::watch::SendError;
use openraft_rt::watch::Watch;
use openraft_rt::watch::WatchReceiver;
use openraft_rt::watch::WatchSender;
use openraft_rt::OptionalSend;
use openraft_rt::OptionalSync;

pub struct SimWatch;

struct Shared<T> {
    value: T,
    version: u64,
    senders: usize,
    receivers: usize,
    wakers: Vec<Waker>,
}

type Cell<T> = Arc<Mutex<Shared<T>>>;

fn lock<T>(c: &Cell<T>) -> MutexGuard<'_, Shared<T>> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Sender<T>(Cell<T>);
pub struct Receiver<T> {
    cell: Cell<T>,
    seen: u64,
}

pub struct Ref<'a, T>(MutexGuard<'a, Shared<T>>);

impl<T> Deref for Ref<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.0).senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let wakers = {
            let mut s = lock(&self.0);
            s.senders -= 1;
            if s.senders == 0 {
                std::mem::take(&mut s.wakers)
            } else {
                Vec::new()
            }
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        lock(&self.cell).receivers += 1;
        Receiver {
            cell: self.cell.clone(),
            seen: self.seen,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        lock(&self.cell).receivers -= 1;
    }
}

impl Watch for SimWatch {
    type Sender<T: OptionalSend + OptionalSync> = Sender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = Receiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Sender<T>, Receiver<T>) {
        let cell = Arc::new(Mutex::new(Shared {
            value: init,
            version: 0,
            senders: 1,
            receivers: 1,
            wakers: Vec::new(),
        }));
        (Sender(cell.clone()), Receiver { cell, seen: 0 })
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<SimWatch, T> for Sender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        let wakers = {
            let mut s = lock(&self.0);
            if s.receivers == 0 {
                return Err(SendError(value));
            }
            s.value = value;
            s.version += 1;
            std::mem::take(&mut s.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let wakers = {
            let mut s = lock(&self.0);
            if !modify(&mut s.value) {
                return false;
            }
            s.version += 1;
            std::mem::take(&mut s.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
        true
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        Ref(lock(&self.0))
    }

    fn subscribe(&self) -> Receiver<T> {
        let mut s = lock(&self.0);
        s.receivers += 1;
        let seen = s.version;
        drop(s);
        Receiver {
            cell: self.0.clone(),
            seen,
        }
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<SimWatch, T> for Receiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        poll_fn(|cx| {
            let mut s = lock(&self.cell);
            if s.version > self.seen {
                self.seen = s.version;
                return Poll::Ready(Ok(()));
            }
            if s.senders == 0 {
                return Poll::Ready(Err(RecvError(())));
            }
            if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                s.wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        Ref(lock(&self.cell))
    }

    fn borrow_and_update(&mut self) -> Ref<'_, T> {
        let guard = lock(&self.cell);
        self.seen = guard.version;
        Ref(guard)
    }
}
