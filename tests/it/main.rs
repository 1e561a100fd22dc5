//! The one integration test binary of the `vigil` package: real sockets on port 0, the real
//! embedded store, the real binary where a process boundary matters (kill -9, demo, browser).

mod support;

mod audit;
mod browser;
mod crash;
mod demo;
mod devices;
mod disk_full;
mod e2e;
mod external;
mod fhir;
mod fixtures;
mod hardening;
mod harness;
mod kassandra;
mod mllp;
mod mllp_hardening;
mod outage;
mod overload;
mod protocol;
mod restart;
mod rules;
mod storage;
mod webhooks;
