//! Linearizability checking of a KV history, one key at a time (Wing & Gong's search with
//! Lowe's memoization, as Knossos and Porcupine do it).
//!
//! The model is Consul's KV entry reduced to what the workload observes. Every written value
//! is unique (client id and counter), so a value identifies the write that made it, and the
//! ModifyIndex of a value is a fixed number learned from observations: a read that returned
//! `(value, ModifyIndex)` or the acknowledgement of the write that created it. A check-and-set
//! names the ModifyIndex it expects, so the model can decide it from the current value alone.
//!
//! Outcomes: `Ok` operations must take effect exactly once between invocation and
//! completion; `Unknown` ones (a write whose reply was lost) may take effect once at any
//! time after invocation, or never; failed operations are left out.

use std::collections::BTreeMap;
use std::collections::HashSet;

/// A value written by the workload; 0 is never written.
pub type Value = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Get,
    /// Write a value never written before.
    Set(Value),
    /// Check-and-set on ModifyIndex (0: only if absent). `fresh` is false when the value
    /// was read back from the key (a rewrite that must not move the index).
    Cas {
        expect: u64,
        value: Value,
        fresh: bool,
    },
    Delete,
    DeleteCas {
        expect: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read: the value and its ModifyIndex, or nothing.
    Read(Option<(Value, u64)>),
    /// A write's answer (`true`/`false`) and the Raft index it was applied at.
    Write {
        ok: bool,
        index: u64,
    },
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: u64,
    pub invoke: u64,
    /// Completion time; `u64::MAX` for unknown outcomes.
    pub complete: u64,
    pub kind: OpKind,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history; the message names the evidence.
    Violation(String),
    /// The search budget ran out; treated as a pass but reported.
    Inconclusive,
}

/// Search budget per key, in visited states.
pub const SEARCH_STATES_MAX: usize = 2_000_000;

type State = Option<Value>;

struct Model<'a> {
    index_of: &'a BTreeMap<Value, u64>,
}

impl Model<'_> {
    fn matches(&self, state: State, expect: u64) -> bool {
        match state {
            None => expect == 0,
            Some(v) => expect != 0 && self.index_of.get(&v) == Some(&expect),
        }
    }

    /// The state after `op`, if `op` with its outcome can happen in `state`.
    fn step(&self, state: State, op: &Op) -> Option<State> {
        let known = |ok: bool| match op.outcome {
            Outcome::Write { ok: want, .. } => want == ok,
            Outcome::Unknown => true,
            Outcome::Read(_) => false,
        };
        match &op.kind {
            OpKind::Get => match &op.outcome {
                Outcome::Read(seen) => (seen.map(|(v, _)| v) == state).then_some(state),
                _ => None,
            },
            OpKind::Set(v) => known(true).then_some(Some(*v)),
            OpKind::Cas { expect, value, .. } => {
                if self.matches(state, *expect) {
                    known(true).then_some(Some(*value))
                } else {
                    known(false).then_some(state)
                }
            }
            OpKind::Delete => known(true).then_some(None),
            OpKind::DeleteCas { expect } => match state {
                None => known(true).then_some(None),
                Some(_) if *expect != 0 && self.matches(state, *expect) => {
                    known(true).then_some(None)
                }
                Some(_) => known(false).then_some(state),
            },
        }
    }
}

/// Learn each value's ModifyIndex from the history; two different indexes for one value
/// are a violation in themselves (a write applied twice, or a no-op that moved the index).
pub fn index_of_values(ops: &[&Op]) -> Result<BTreeMap<Value, u64>, String> {
    let mut index_of: BTreeMap<Value, u64> = BTreeMap::new();
    let mut learn = |v: Value, i: u64, how: &str| -> Result<(), String> {
        match index_of.insert(v, i) {
            Some(prev) if prev != i => Err(format!(
                "value {v:#x} seen with ModifyIndex {prev} and {i} ({how})"
            )),
            _ => Ok(()),
        }
    };
    for op in ops {
        match (&op.kind, &op.outcome) {
            (OpKind::Get, Outcome::Read(Some((v, i)))) => learn(*v, *i, "read")?,
            (OpKind::Set(v), Outcome::Write { ok: true, index }) if *index != 0 => {
                learn(*v, *index, "write ack")?
            }
            (
                OpKind::Cas {
                    value, fresh: true, ..
                },
                Outcome::Write { ok: true, index },
            ) if *index != 0 => learn(*value, *index, "cas ack")?,
            _ => {}
        }
    }
    Ok(index_of)
}

/// Check the operations on one key.
pub fn check_key(ops: &[&Op]) -> Verdict {
    let index_of = match index_of_values(ops) {
        Ok(m) => m,
        Err(e) => return Verdict::Violation(e),
    };
    let model = Model {
        index_of: &index_of,
    };
    let n = ops.len();
    let words = n.div_ceil(64);
    // Unknown operations never need to be linearized.
    let required: Vec<usize> = (0..n)
        .filter(|&i| ops[i].outcome != Outcome::Unknown)
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (ops[i].invoke, i));

    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    // Depth-first search over (linearized set, state).
    let mut stack: Vec<(Vec<u64>, State)> = vec![(vec![0; words], None)];
    let mut best_done = 0usize;
    while let Some((done, state)) = stack.pop() {
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        if required.iter().all(|&i| is_done(i)) {
            return Verdict::Linearizable;
        }
        best_done = best_done.max(required.iter().filter(|&&i| is_done(i)).count());
        if !seen.insert((done.clone(), state)) {
            continue;
        }
        if seen.len() > SEARCH_STATES_MAX {
            return Verdict::Inconclusive;
        }
        // The earliest completion among pending ops bounds what may go next.
        let horizon = (0..n)
            .filter(|&i| !is_done(i))
            .map(|i| ops[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        for &i in order.iter().rev() {
            if is_done(i) || ops[i].invoke > horizon {
                continue;
            }
            if let Some(next) = model.step(state, ops[i]) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                stack.push((d, next));
            }
        }
    }
    Verdict::Violation(format!(
        "no linearization: at most {best_done} of {} completed operations fit",
        required.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoke: u64, complete: u64, kind: OpKind, outcome: Outcome) -> Op {
        Op {
            client: 0,
            invoke,
            complete,
            kind,
            outcome,
        }
    }

    fn w(ok: bool, index: u64) -> Outcome {
        Outcome::Write { ok, index }
    }

    fn check(ops: &[Op]) -> Verdict {
        check_key(&ops.iter().collect::<Vec<_>>())
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, 1, OpKind::Set(7), w(true, 5)),
            op(2, 3, OpKind::Get, Outcome::Read(Some((7, 5)))),
            op(
                4,
                5,
                OpKind::Cas {
                    expect: 5,
                    value: 8,
                    fresh: true,
                },
                w(true, 9),
            ),
            op(6, 7, OpKind::Get, Outcome::Read(Some((8, 9)))),
            op(8, 9, OpKind::Delete, w(true, 10)),
            op(10, 11, OpKind::Get, Outcome::Read(None)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_is_caught() {
        // A read that starts after a write completed must see it.
        let h = [
            op(0, 1, OpKind::Set(7), w(true, 5)),
            op(2, 3, OpKind::Set(8), w(true, 6)),
            op(4, 5, OpKind::Get, Outcome::Read(Some((7, 5)))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn concurrent_ops_may_go_either_way() {
        let h = [
            op(0, 10, OpKind::Set(7), w(true, 5)),
            op(1, 2, OpKind::Get, Outcome::Read(None)),
            op(3, 4, OpKind::Get, Outcome::Read(Some((7, 5)))),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let took_effect = [
            op(0, u64::MAX, OpKind::Set(7), Outcome::Unknown),
            op(5, 6, OpKind::Get, Outcome::Read(Some((7, 3)))),
        ];
        assert_eq!(check(&took_effect), Verdict::Linearizable);
        let never = [
            op(0, u64::MAX, OpKind::Set(7), Outcome::Unknown),
            op(5, 6, OpKind::Get, Outcome::Read(None)),
        ];
        assert_eq!(check(&never), Verdict::Linearizable);
        // ... but not before it was invoked.
        let too_early = [
            op(0, 1, OpKind::Get, Outcome::Read(Some((7, 3)))),
            op(5, u64::MAX, OpKind::Set(7), Outcome::Unknown),
        ];
        assert!(matches!(check(&too_early), Verdict::Violation(_)));
    }

    #[test]
    fn failed_cas_that_took_effect_is_caught() {
        // A cas acknowledged false whose value is later visible: applied twice or lied.
        let h = [
            op(
                0,
                1,
                OpKind::Cas {
                    expect: 0,
                    value: 7,
                    fresh: true,
                },
                w(false, 4),
            ),
            op(2, 3, OpKind::Get, Outcome::Read(Some((7, 4)))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        let h = [
            op(0, 1, OpKind::Set(7), w(true, 5)),
            op(2, 3, OpKind::Get, Outcome::Read(None)),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn one_value_with_two_indexes_is_caught() {
        let h = [
            op(0, 1, OpKind::Set(7), w(true, 5)),
            op(2, 3, OpKind::Get, Outcome::Read(Some((7, 6)))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn delete_cas_rules() {
        let h = [
            op(0, 1, OpKind::DeleteCas { expect: 3 }, w(true, 2)),
            op(2, 3, OpKind::Set(7), w(true, 5)),
            op(4, 5, OpKind::DeleteCas { expect: 0 }, w(false, 6)),
            op(6, 7, OpKind::DeleteCas { expect: 5 }, w(true, 7)),
            op(8, 9, OpKind::Get, Outcome::Read(None)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
        let wrong = [
            op(2, 3, OpKind::Set(7), w(true, 5)),
            op(4, 5, OpKind::DeleteCas { expect: 0 }, w(true, 6)),
        ];
        assert!(matches!(check(&wrong), Verdict::Violation(_)));
    }
}
