//! Synchronous rtnetlink for a one-shot plugin: one socket per namespace,
//! one request at a time, errors as `io::Error` with the kernel's errno.

mod address;
mod link;
mod route;

use std::fs::File;
use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use link::Link;
pub use route::RouteEntry;

use crate::netns::NetnsGuard;

/// A route-netlink socket bound in one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    rbuf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's namespace.
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            rbuf: Vec::with_capacity(64 * 1024),
        })
    }

    /// A socket bound inside `netns`: the namespace is entered only to create
    /// the socket, which keeps working there after the thread returns.
    pub fn in_netns(netns: &File) -> io::Result<Self> {
        let _guard = NetnsGuard::enter(netns)?;
        Netlink::new()
    }

    /// Send one request and collect its replies: until the ACK for requests,
    /// until DONE for dumps.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        loop {
            self.rbuf.clear();
            let n = self.socket.recv(&mut self.rbuf, 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.rbuf[offset..n])
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {e}"))
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }
}

/// The errno of an `io::Error`, for matching EEXIST, ENODEV and friends.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}
