//! The transports, siblings: each turns the backplane's one [`Waiting`]
//! handle into its wire format, so limits, tokens and shutdown live once:
//! [`sse`] the `/push` event stream, [`poll`] the `/status` long-poll
//! answer, [`ws`] the `/ws` frames. Each owns its handler; what they share
//! (which payment a request names, and whether it may watch it) is in
//! [`access`].
//!
//! [`Waiting`]: crate::backplane::Waiting

pub(crate) mod access;
pub(crate) mod poll;
pub(crate) mod sse;
pub(crate) mod ws;
