//! Tests of the readiness ring, with real sockets.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::IntoRawFd;

/// A connected pair: the client, and the server side's descriptor
/// (non-blocking, as the shard's are).
fn pair() -> (TcpStream, OwnedFd) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    // SAFETY: taken from the stream, owned by nothing else.
    (client, unsafe {
        OwnedFd::from_raw_fd(server.into_raw_fd())
    })
}

/// What a test runs on the shard.
type Work = Pin<Box<dyn Future<Output = ()>>>;
type Test = Box<dyn FnOnce(Rc<Readiness>) -> Work + Send>;

fn on_a_shard(
    test: impl FnOnce(Rc<Readiness>) -> Pin<Box<dyn Future<Output = ()>>> + Send + 'static,
) {
    on_a_shard_waiting(Duration::from_micros(200), Box::new(test));
}

/// Run `test` on an executor whose driver waits up to `idle_wait` in its ring.
fn on_a_shard_waiting(idle_wait: Duration, test: Test) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let readiness = Readiness::new(idle_wait).expect("a readiness ring");
            let driver = glommio::spawn_local(readiness.clone().drive());
            test(readiness).await;
            drop(driver);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_socket_is_ready_when_bytes_arrive_and_not_before() {
    on_a_shard(|readiness| {
        Box::pin(async move {
            let (mut client, server) = pair();
            let mut interest = readiness.register(server.as_raw_fd());
            let fd = server.as_raw_fd();
            let mut buf = [0u8; 64];
            // New: worth a look, which finds nothing; then not worth one.
            assert!(interest.try_recv(fd, &mut buf).is_none());
            assert!(!interest.take_ready());
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                client.write_all(b"hello").unwrap();
                client
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            interest.readable(Some(deadline)).await.unwrap();
            assert_eq!(interest.try_recv(fd, &mut buf).unwrap().unwrap(), 5);
            assert!(interest.try_recv(fd, &mut buf).is_none());
            // Armed once: the next bytes are announced without a new poll.
            let mut client = writer.join().unwrap();
            client.write_all(b"again").unwrap();
            interest.readable(Some(deadline)).await.unwrap();
            assert_eq!(interest.try_recv(fd, &mut buf).unwrap().unwrap(), 5);
            // A read that fills the buffer is followed by another look.
            client.write_all(b"0123456789").unwrap();
            interest.readable(Some(deadline)).await.unwrap();
            assert_eq!(interest.try_recv(fd, &mut buf[..4]).unwrap().unwrap(), 4);
            assert_eq!(interest.try_recv(fd, &mut buf).unwrap().unwrap(), 6);
            // The end of the stream is announced too.
            drop(client);
            interest.readable(Some(deadline)).await.unwrap();
            assert_eq!(interest.try_recv(fd, &mut buf).unwrap().unwrap(), 0);
        })
    });
}

/// Wait on a socket nobody writes to, `time` at most; the wait must time
/// out. Returns its deadline.
async fn times_out(readiness: &Rc<Readiness>, time: Duration) -> Instant {
    let (_client, server) = pair();
    let mut interest = readiness.register(server.as_raw_fd());
    assert!(interest.try_recv(server.as_raw_fd(), &mut [0; 8]).is_none());
    let deadline = Instant::now() + time;
    let got = interest.readable(Some(deadline)).await;
    assert!(matches!(got, Err(WaitError::TimedOut)), "{got:?}");
    deadline
}

#[test]
fn a_wait_ends_at_its_deadline() {
    on_a_shard(|readiness| {
        Box::pin(async move {
            let deadline = times_out(&readiness, Duration::from_millis(30)).await;
            assert!(Instant::now() >= deadline);
        })
    });
}

/// A wait whose deadline has already passed times out: the wait reads no
/// clock, the driver's next round expires it, whether the driver slept
/// with no deadline or knew a later one.
#[test]
fn a_wait_whose_deadline_has_passed_times_out() {
    on_a_shard(|readiness| {
        Box::pin(async move {
            let (_client, server) = pair();
            let fd = server.as_raw_fd();
            let mut interest = readiness.register(fd);
            assert!(interest.try_recv(fd, &mut [0; 8]).is_none());
            // Long enough for the driver to go to sleep, with no deadline.
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let past = Instant::now() - Duration::from_millis(1);
            let got = interest.readable(Some(past)).await;
            assert!(matches!(got, Err(WaitError::TimedOut)), "{got:?}");

            // Another socket waits with a later deadline.
            let (mut other_client, other_server) = pair();
            let mut other = readiness.register(other_server.as_raw_fd());
            assert!(other
                .try_recv(other_server.as_raw_fd(), &mut [0; 8])
                .is_none());
            let later = Instant::now() + Duration::from_secs(30);
            let waiting = glommio::spawn_local(async move {
                let got = other.readable(Some(later)).await;
                drop(other);
                drop(other_server);
                got.is_ok()
            });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let past = Instant::now() - Duration::from_millis(1);
            let got = interest.readable(Some(past)).await;
            assert!(matches!(got, Err(WaitError::TimedOut)), "{got:?}");
            other_client.write_all(b"x").unwrap();
            assert!(waiting.await, "the later wait ends when its bytes arrive");
        })
    });
}

/// A write waiting for room to a peer that has half-closed and does not
/// read: io_uring adds POLLRDHUP to every poll, so each poll for room
/// completed at once and the wait spun a core until its deadline (a
/// client that sent its request, shut its side and read slowly). It now
/// looks again every `SHUT_PEER_PAUSE`, and still ends at its deadline,
/// and once the peer reads there is room.
#[test]
fn a_write_to_a_half_closed_peer_waits_for_room_without_spinning() {
    on_a_shard(|readiness| {
        Box::pin(async move {
            let (mut client, server) = pair();
            let fd = server.as_raw_fd();
            let mut interest = readiness.register(fd);
            let chunk = [b'x'; 65536];
            while crate::sys::send(fd, &chunk).is_ok() {}
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let time = Duration::from_millis(200);
            let deadline = Instant::now() + time;
            let mut waits = 0;
            let end = loop {
                match interest.writable(deadline).await {
                    Ok(()) => waits += 1,
                    Err(e) => break e,
                }
                // Whatever room the peer's kernel made, filled again.
                while crate::sys::send(fd, &chunk).is_ok() {}
            };
            assert!(matches!(end, WaitError::TimedOut), "{end:?}");
            assert!(Instant::now() >= deadline);
            // One look per pause, not thousands.
            let most = (time.as_millis() / SHUT_PEER_PAUSE.as_millis()) as usize + 2;
            assert!(waits <= most, "{waits} wake-ups in {time:?}");
            let reader = std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while client.read(&mut buf).unwrap_or(0) > 0 {}
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                interest
                    .writable(deadline)
                    .await
                    .expect("room once the peer reads");
                if crate::sys::send(fd, &chunk).is_ok() {
                    break;
                }
            }
            drop(interest);
            drop(server);
            reader.join().unwrap();
        })
    });
}

/// The race a poll remove lost: bytes arrive (their wake-up's task work
/// then owns the poll until this thread enters the kernel) and the
/// connection closes before any other system call.
#[test]
fn a_connection_closed_right_after_bytes_arrived_is_closed_for_the_peer() {
    on_a_shard(|readiness| {
        Box::pin(async move {
            let (client, server) = pair();
            let mut interest = readiness.register(server.as_raw_fd());
            assert!(interest.try_recv(server.as_raw_fd(), &mut [0; 8]).is_none());
            let short = Instant::now() + Duration::from_millis(10);
            assert!(interest.readable(Some(short)).await.is_err());
            let written = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = written.clone();
            let mut peer = client.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                peer.write_all(b"late").unwrap();
                flag.store(true, std::sync::atomic::Ordering::Release);
            });
            // No system call on this thread until the close.
            while !written.load(std::sync::atomic::Ordering::Acquire) {
                std::hint::spin_loop();
            }
            drop(interest);
            drop(server);
            writer.join().unwrap();
            let mut client = client;
            client
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            // Closed with unread bytes: a reset rather than a FIN. What
            // must not happen is nothing at all.
            let mut buf = [0u8; 8];
            match client.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => panic!("the socket was not closed (the poll outlived it): {other:?}"),
            }
        })
    });
}

#[test]
fn a_closed_connection_is_closed_for_the_peer_at_once() {
    on_a_shard(|readiness| {
        Box::pin(async move {
            let (mut client, server) = pair();
            let mut interest = readiness.register(server.as_raw_fd());
            assert!(interest.try_recv(server.as_raw_fd(), &mut [0; 8]).is_none());
            // Arm the poll: it now holds the socket in the kernel.
            let short = Instant::now() + Duration::from_millis(10);
            assert!(interest.readable(Some(short)).await.is_err());
            drop(interest);
            drop(server);
            // Without the removal the peer would see no FIN.
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(client.read(&mut buf).unwrap(), 0);
            // The poll's last completion frees the slot.
            for _ in 0..100 {
                if readiness.registered() == 0 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(readiness.registered(), 0);
        })
    });
}

/// An idle wait far longer than any test: a driver that waits it out
/// instead of letting a task run shows as a test that takes this long.
const LONG_WAIT: Duration = Duration::from_secs(20);

/// Runs on a shard whose driver waits `idle_wait` once busy: a counted task
/// waits for a byte sent a moment later (so that the driver is busy when
/// it wakes the task), then does `then` with the ring, the socket's
/// registration and its descriptor (a second byte follows 100 ms after
/// the first); returns how long it all took.
fn after_a_wake(idle_wait: Duration, then: fn(Rc<Readiness>, Interest, RawFd) -> Work) -> Duration {
    let took = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let out = took.clone();
    on_a_shard_waiting(
        idle_wait,
        Box::new(move |readiness| {
            Box::pin(async move {
                let started = Instant::now();
                let (mut client, server) = pair();
                let fd = server.as_raw_fd();
                let mut interest = readiness.register(fd);
                let writer = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    client.write_all(b"x").unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    client.write_all(b"y").unwrap();
                    client
                });
                let ring = readiness.clone();
                glommio::spawn_local(taking_turns(async move {
                    assert!(interest.try_recv(fd, &mut [0; 8]).is_none());
                    interest.readable(None).await.unwrap();
                    then(ring, interest, fd).await;
                }))
                .await;
                *out.lock().unwrap() = started.elapsed();
                drop(writer.join());
            })
        }),
    );
    let took = *took.lock().unwrap();
    took
}

#[test]
fn the_driver_lets_a_runnable_task_run_before_it_waits_in_its_ring() {
    // The woken task spawns another and waits for it. Spawned into the
    // queue, as the intake's gate spawns a connection (not run at once, as
    // `spawn_local` would): it is runnable while the driver, busy a moment
    // ago, would wait.
    let took = after_a_wake(LONG_WAIT, |_, _, _| {
        let queue = glommio::executor().current_task_queue();
        Box::pin(glommio::spawn_local_into(taking_turns(async {}), queue).unwrap())
    });
    assert!(
        took < LONG_WAIT / 2,
        "the spawned task waited out the driver's wait ({took:?})"
    );
}

#[test]
fn the_driver_does_not_wait_in_its_ring_while_a_task_waits_through_glommio() {
    // A glommio timer's expiry arrives in glommio's ring, which the
    // driver's wait does not watch.
    let took = after_a_wake(LONG_WAIT, |_, _, _| {
        Box::pin(crate::recheck::wait(glommio::timer::sleep(
            Duration::from_millis(1),
        )))
    });
    assert!(
        took < LONG_WAIT / 2,
        "the timer waited out the driver's wait ({took:?})"
    );
}

#[test]
fn a_driver_busy_a_moment_ago_waits_in_its_ring_before_it_parks() {
    // What the two tests above guard must not turn the wait off: once the
    // woken task waits again and nothing else can run, the driver waits.
    after_a_wake(Duration::from_millis(5), |driver, mut interest, fd| {
        Box::pin(async move {
            let before = driver.brief_waits.get();
            assert_eq!(interest.try_recv(fd, &mut [0; 8]).unwrap().unwrap(), 1);
            interest.readable(None).await.unwrap();
            assert!(driver.brief_waits.get() > before, "the driver never waited");
            assert!(!crate::recheck::away());
        })
    });
}

#[test]
fn the_driver_waits_in_its_ring_no_longer_than_the_next_deadline() {
    // The woken task waits on another socket, with a deadline: the
    // driver's wait ends there, and the deadline wakes the task.
    let took = after_a_wake(LONG_WAIT, |readiness, _, _| {
        Box::pin(async move {
            times_out(&readiness, Duration::from_millis(5)).await;
        })
    });
    assert!(
        took < LONG_WAIT / 2,
        "the deadline waited out the driver's wait ({took:?})"
    );
}

#[test]
fn glommio_is_not_kept_waiting_by_a_steady_trickle_of_ring_events() {
    // A byte every 2 ms, each less than the idle wait after the last: each
    // of the driver's brief waits ends with work, so it never parks. A
    // glommio timer (as the shard's ticker, which the ring does not see)
    // must still be served soon, not
    // when the recheck budget runs out or glommio's preemption timer
    // (100 ms) fires.
    on_a_shard_waiting(
        Duration::from_millis(10),
        Box::new(|readiness| {
            Box::pin(async move {
                let (mut client, server) = pair();
                let fd = server.as_raw_fd();
                let mut interest = readiness.register(fd);
                let writer = std::thread::spawn(move || {
                    for _ in 0..200 {
                        std::thread::sleep(Duration::from_millis(2));
                        if client.write_all(b"x").is_err() {
                            break;
                        }
                    }
                });
                let reader = glommio::spawn_local(taking_turns(async move {
                    let mut got = 0;
                    while got < 200 {
                        match interest.try_recv(fd, &mut [0; 8]) {
                            Some(Ok(0)) | Some(Err(_)) => break,
                            Some(Ok(n)) => got += n,
                            None => interest.readable(None).await.unwrap(),
                        }
                    }
                }));
                // 1 ms timers, one after another, while the trickle lasts
                // (at least 400 ms): every 11 ms at worst, not every 100.
                let fired = Rc::new(Cell::new(0u32));
                let counted = fired.clone();
                let timers = glommio::spawn_local(async move {
                    loop {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                        counted.set(counted.get() + 1);
                    }
                });
                reader.await;
                let fired = fired.get();
                drop(timers);
                writer.join().unwrap();
                assert!(fired >= 15, "{fired} 1 ms timers fired in 200 bytes' time");
            })
        }),
    );
}

#[test]
fn a_message_through_glommio_reaches_a_shard_waiting_in_its_ring_when_the_bell_rings() {
    // The shard, busy a moment ago (a byte arrived), waits in its ring
    // while another executor sends it a message through glommio's channel
    // (as the master sends a drain) and rings the bell. The message must
    // be taken before the next byte, a second later, would end that wait.
    on_a_shard_waiting(
        LONG_WAIT,
        Box::new(|readiness| {
            Box::pin(async move {
                use std::sync::mpsc::channel;
                let (mut client, server) = pair();
                let fd = server.as_raw_fd();
                let mut interest = readiness.register(fd);
                let bell = Bell::new().unwrap();
                let ringer = bell.try_clone().unwrap();
                glommio::spawn_local(taking_turns(readiness.clone().heed(bell))).detach();
                let (tx, rx) = glommio::channels::shared_channel::new_bounded(1);
                // Each step waits for the one before: the first byte read,
                // the message sent, the test over.
                let (read_first, first_read) = channel();
                let (say_sent, sent) = channel();
                let (say_done, done) = channel::<()>();
                let writer = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    client.write_all(b"x").unwrap();
                    sent.recv().unwrap();
                    std::thread::sleep(Duration::from_secs(1));
                    let _ = client.write_all(b"y");
                    client
                });
                let master = glommio::LocalExecutorBuilder::default()
                    .spawn(move || async move {
                        let tx = tx.connect().await;
                        first_read.recv().unwrap();
                        // Long enough for the shard to be waiting in its ring.
                        std::thread::sleep(Duration::from_millis(200));
                        tx.try_send(7u32).unwrap();
                        ringer.ring();
                        say_sent.send(()).unwrap();
                        // Open until the shard has it: a close would wake it too.
                        let _ = done.recv_timeout(LONG_WAIT * 2);
                    })
                    .unwrap();
                let rx = crate::recheck::wait(rx.connect()).await;
                let ring = readiness.clone();
                let (waited, next_byte_came_first) =
                    glommio::spawn_local(taking_turns(async move {
                        interest.readable(None).await.unwrap();
                        assert_eq!(interest.try_recv(fd, &mut [0; 8]).unwrap().unwrap(), 1);
                        let before = ring.brief_waits.get();
                        read_first.send(()).unwrap();
                        assert_eq!(rx.recv().await, Some(7));
                        (
                            ring.brief_waits.get() > before,
                            interest.try_recv(fd, &mut [0; 8]).is_some(),
                        )
                    }))
                    .await;
                say_done.send(()).unwrap();
                assert!(
                    waited,
                    "the driver never waited in its ring: nothing was tested"
                );
                assert!(
                    !next_byte_came_first,
                    "the message waited for the next byte to end the shard's wait"
                );
                drop(writer.join());
                master.join().unwrap();
            })
        }),
    );
}
