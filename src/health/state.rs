//! Rise/fall hysteresis of one backend, as a pure function of observed outcomes: callers log
//! and count only when `observe` returns a [`Transition`].

/// A change of a backend's health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It came up.
    Up,
    /// It went down.
    Down,
}

/// Hysteresis counters of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    is_up: bool,
    passes: u32,
    fails: u32,
    rise: u32,
    fall: u32,
}

impl HealthState {
    /// A backend that is down and needs `rise` passes (or is up and needs `fall` failures).
    pub fn new(is_up: bool, rise: u32, fall: u32) -> Self {
        HealthState {
            is_up,
            passes: 0,
            fails: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// New `rise`/`fall` (reload); progress toward either is kept.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Whether the verdict is up.
    pub fn is_up(&self) -> bool {
        self.is_up
    }

    /// Folds in one check outcome.
    pub fn observe(&mut self, pass: bool) -> Option<Transition> {
        if pass {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.is_up && self.passes >= self.rise {
                self.is_up = true;
                return Some(Transition::Up);
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if self.is_up && self.fails >= self.fall {
                self.is_up = false;
                return Some(Transition::Down);
            }
        }
        None
    }

    /// The start-up round: one pass is enough to be up at once; a failure leaves it down
    /// (needing `rise` passes).
    pub fn observe_initial(&mut self, pass: bool) -> Option<Transition> {
        self.passes = 0;
        self.fails = 0;
        match (pass, self.is_up) {
            (true, false) => {
                self.is_up = true;
                Some(Transition::Up)
            }
            (false, true) => {
                self.is_up = false;
                Some(Transition::Down)
            }
            _ => None,
        }
    }

    /// Marks it down at once (passive failures); it then needs `rise` passes.
    pub fn force_down(&mut self) -> Option<Transition> {
        self.passes = 0;
        self.fails = 0;
        if self.is_up {
            self.is_up = false;
            Some(Transition::Down)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_table() {
        // (start up?, rise, fall, outcomes, expected transitions at each step)
        type Case = (
            bool,
            u32,
            u32,
            &'static [bool],
            &'static [Option<Transition>],
        );
        let cases: &[Case] = &[
            (false, 2, 3, &[true, true], &[None, Some(Transition::Up)]),
            (
                false,
                2,
                3,
                &[true, false, true, true],
                &[None, None, None, Some(Transition::Up)],
            ),
            (
                true,
                2,
                3,
                &[false, false, false, false],
                &[None, None, Some(Transition::Down), None],
            ),
            (
                true,
                2,
                3,
                &[false, false, true, false, false],
                &[None, None, None, None, None],
            ),
            (
                false,
                1,
                1,
                &[true, false, true],
                &[
                    Some(Transition::Up),
                    Some(Transition::Down),
                    Some(Transition::Up),
                ],
            ),
        ];
        for (i, (up, rise, fall, outcomes, want)) in cases.iter().enumerate() {
            let mut s = HealthState::new(*up, *rise, *fall);
            let got: Vec<_> = outcomes.iter().map(|&p| s.observe(p)).collect();
            assert_eq!(&got[..], *want, "case {i}");
        }
    }

    #[test]
    fn initial_round_and_force_down() {
        let mut s = HealthState::new(false, 3, 3);
        assert_eq!(s.observe_initial(true), Some(Transition::Up));
        assert_eq!(s.force_down(), Some(Transition::Down));
        assert_eq!(s.force_down(), None);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), Some(Transition::Up));
    }
}
