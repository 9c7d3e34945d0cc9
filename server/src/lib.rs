//! siderite's server: the agent and admin gRPC APIs, the store, the registry, the CLI.
#![forbid(unsafe_code)]

pub mod accept;
pub mod api;
pub mod auth;
pub mod bench;
pub mod binding;
pub mod boot;
pub mod cli;
pub mod clientconfig;
pub mod configpatch;
pub mod controller;
pub mod environment;
pub mod fake;
pub mod fetch;
pub mod flood;
pub mod guard;
pub mod http;
pub mod lab;
pub mod leader;
pub mod lifecycle;
pub mod machineconfig;
pub mod metadata;
pub mod model;
pub mod pki;
pub mod registry;
pub mod serve;
pub mod serverclass;
pub mod sessions;
pub mod store;
