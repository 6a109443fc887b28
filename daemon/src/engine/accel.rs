//! Accelerator choice: KVM where it can run a standard guest, else TCG.

use std::path::Path;

use crate::config::AccelChoice;

use super::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccelInfo {
    pub accel: Accel,
    /// Why it was chosen, for logs and `flintctl node info`.
    pub reason: String,
}

/// What the host offers, read from the system.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    /// `/dev/kvm` exists and opens read-write.
    pub kvm_usable: bool,
    /// `/dev/kvm` comes from the PVM module, which cannot run standard guests.
    pub kvm_is_pvm: bool,
}

impl HostFacts {
    pub fn read() -> Self {
        let kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let kvm_is_pvm = Path::new("/sys/module/kvm_pvm").exists();
        Self {
            kvm_usable,
            kvm_is_pvm,
        }
    }
}

pub fn detect(choice: AccelChoice) -> Result<AccelInfo, EngineError> {
    decide(choice, HostFacts::read())
}

fn decide(choice: AccelChoice, host: HostFacts) -> Result<AccelInfo, EngineError> {
    const PVM: &str = "/dev/kvm is provided by kvm_pvm, a paravirtual nested hypervisor \
                       that cannot run a standard guest kernel";
    match choice {
        AccelChoice::Tcg => Ok(AccelInfo {
            accel: Accel::Tcg,
            reason: "tcg requested in the configuration".into(),
        }),
        AccelChoice::Kvm if !host.kvm_usable => Err(EngineError::Accel(
            "kvm",
            "/dev/kvm is missing or not accessible".into(),
        )),
        AccelChoice::Kvm if host.kvm_is_pvm => Err(EngineError::Accel("kvm", PVM.into())),
        AccelChoice::Kvm => Ok(AccelInfo {
            accel: Accel::Kvm,
            reason: "kvm requested in the configuration".into(),
        }),
        AccelChoice::Auto if host.kvm_usable && !host.kvm_is_pvm => Ok(AccelInfo {
            accel: Accel::Kvm,
            reason: "hardware virtualization available through /dev/kvm".into(),
        }),
        AccelChoice::Auto if host.kvm_is_pvm => Ok(AccelInfo {
            accel: Accel::Tcg,
            reason: format!("{PVM}; falling back to TCG software emulation (slow)"),
        }),
        AccelChoice::Auto => Ok(AccelInfo {
            accel: Accel::Tcg,
            reason: "no usable /dev/kvm; falling back to TCG software emulation (slow)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(kvm_usable: bool, kvm_is_pvm: bool) -> HostFacts {
        HostFacts {
            kvm_usable,
            kvm_is_pvm,
        }
    }

    #[test]
    fn auto_uses_kvm_only_where_it_runs_standard_guests() {
        let d = |h| decide(AccelChoice::Auto, h).unwrap().accel;
        assert_eq!(d(host(true, false)), Accel::Kvm);
        assert_eq!(d(host(true, true)), Accel::Tcg);
        assert_eq!(d(host(false, false)), Accel::Tcg);
        let pvm = decide(AccelChoice::Auto, host(true, true)).unwrap();
        assert!(pvm.reason.contains("kvm_pvm"), "{}", pvm.reason);
    }

    #[test]
    fn forced_kvm_on_pvm_is_refused_with_the_reason() {
        let e = decide(AccelChoice::Kvm, host(true, true)).unwrap_err();
        assert!(e.to_string().contains("kvm"), "{e}");
        assert!(decide(AccelChoice::Kvm, host(false, false)).is_err());
        assert_eq!(
            decide(AccelChoice::Tcg, host(true, false)).unwrap().accel,
            Accel::Tcg
        );
    }
}
