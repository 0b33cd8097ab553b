//! Gateway configuration (DESIGN §2.2): the seed's JSON format, `global_defaults`, environment
//! overrides, secret references, legacy `workspaces.json` conversion and `GATEWAY_MODE`.

mod model;

pub use model::*;
