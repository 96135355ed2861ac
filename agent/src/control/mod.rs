//! The control plane side of the agent: the durable event outbox (and, later,
//! the mTLS API server and the event pusher).

pub mod outbox;
