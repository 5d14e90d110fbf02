//! The config files' services and checks (`service`, `services`, `check`, `checks`, in JSON
//! or HCL): compiled at start and on reload (a bad definition stops either, naming it), and
//! handed to the agent's local state, which registers them like services given over HTTP.

use tribune_core::catalog::ServiceInfo;

use crate::config::Config;
use crate::config::ConfigError;
use crate::http::agent_services::check_def;
use crate::http::agent_services::service_def;
use crate::http::Api;
use crate::local::CheckDef;

/// The definitions of one load of the config.
pub struct Definitions {
    services: Vec<(ServiceInfo, Vec<CheckDef>)>,
    checks: Vec<CheckDef>,
}

/// Read every service and check definition of `cfg`.
pub fn compile(cfg: &Config) -> Result<Definitions, ConfigError> {
    // Config files are this machine's own: `enable_local_script_checks` is enough.
    let scripts = cfg.enable_script_checks || cfg.enable_local_script_checks;
    let mut services = Vec::new();
    for (i, v) in cfg.services.iter().enumerate() {
        let bad = |e: crate::http::ApiError| {
            let name = v
                .get("name")
                .or_else(|| v.get("Name"))
                .and_then(|n| n.as_str());
            ConfigError::Invalid(format!(
                "service {} in the config: {e}",
                name.map_or_else(|| format!("#{}", i + 1), |n| format!("{n:?}"))
            ))
        };
        let l = crate::http::loose(v).map_err(bad)?;
        services.push(service_def(&l, scripts).map_err(bad)?);
    }
    let mut checks = Vec::new();
    for (i, v) in cfg.checks.iter().enumerate() {
        let bad = |e: crate::http::ApiError| {
            ConfigError::Invalid(format!("check #{} in the config: {e}", i + 1))
        };
        let l = crate::http::loose(v).map_err(bad)?;
        let mut def = check_def(&l, None, scripts).map_err(bad)?;
        if def.info.name.is_empty() {
            return Err(bad(crate::http::ApiError::bad_request(
                "Missing check name",
            )));
        }
        if def.info.check_id.is_empty() {
            def.info.check_id = def.info.name.clone();
        }
        checks.push(def);
    }
    Ok(Definitions { services, checks })
}

/// Register the definitions, replacing those of the previous load.
pub fn apply(api: &std::sync::Arc<Api>, defs: Definitions) -> Result<(), ConfigError> {
    api.local
        .load_config(defs.services, defs.checks)
        .map_err(|e| ConfigError::Invalid(format!("registering the config's services: {e}")))
}
