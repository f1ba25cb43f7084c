package faultnet

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
)

// ErrLinkDown is returned by a dial or a write across a link that Network
// has cut (a partition or a node marked down).
var ErrLinkDown = errors.New("faultnet: link down")

// helloMagic starts the header a dialing Layer sends so that the accepting
// side learns who is on the other end of a connection.
const helloMagic = "tally-faultnet/1"

// Network injects faults between the Raft transports of a test cluster. Each
// node gets a Layer: a real TCP listener on loopback (or the node's own
// layer, wrapped) whose connections carry the ids of both ends. A partition
// or a node marked down closes the connections that cross it and makes new
// dials and writes across it fail (a connection carries requests one way and
// responses the other, so a cut breaks both directions). A delay is per
// directed link: every byte sent from one node to another is held for a
// fixed time before it reaches the socket, like a long wire — writes do not
// block, order is kept, pipelining still works.
//
// Network is safe for concurrent use.
type Network struct {
	mu    sync.Mutex
	cut   map[link]bool
	down  map[string]bool // every link of the node is cut (Kill)
	delay map[link]time.Duration
	ids   map[hraft.ServerAddress]string
	conns map[*faultConn]struct{}
}

type link struct{ from, to string }

// NewNetwork returns a network with every link up and no delay.
func NewNetwork() *Network {
	return &Network{
		cut:   make(map[link]bool),
		down:  make(map[string]bool),
		delay: make(map[link]time.Duration),
		ids:   make(map[hraft.ServerAddress]string),
		conns: make(map[*faultConn]struct{}),
	}
}

// Listen opens node id's stream layer on plain TCP at bindAddr (e.g.
// "127.0.0.1:0", or a previous address to restart a node where its peers
// expect it).
func (nw *Network) Listen(id, bindAddr string) (*Layer, error) {
	ln, err := net.Listen("tcp", bindAddr)
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen %s: %w", id, err)
	}
	return nw.Wrap(id, tcpLayer{ln}), nil
}

// Wrap puts node id's stream layer inner (plain TCP, or the mutual-TLS
// layer a real node uses) on the network: connections still go through
// inner — its handshake included — and carry a header naming the dialer
// inside the stream, so that the network can cut and delay them.
func (nw *Network) Wrap(id string, inner hraft.StreamLayer) *Layer {
	nw.mu.Lock()
	nw.ids[hraft.ServerAddress(inner.Addr().String())] = id
	nw.mu.Unlock()
	return &Layer{nw: nw, id: id, ln: inner}
}

// tcpLayer is a plain TCP StreamLayer.
type tcpLayer struct{ net.Listener }

func (l tcpLayer) Dial(address hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(address), timeout)
}

// Transport opens node id's hashicorp/raft transport on a Layer. Its logs
// are discarded: under injected faults it reports every broken connection.
func (nw *Network) Transport(id, bindAddr string) (*hraft.NetworkTransport, error) {
	l, err := nw.Listen(id, bindAddr)
	if err != nil {
		return nil, err
	}
	return hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{
		Stream:  l,
		MaxPool: 3,
		Timeout: 2 * time.Second,
		Logger:  hclog.NewNullLogger(),
		// No pipelined replication, as on a node's own transport: the
		// pipeline can deadlock after a refused append, which hung
		// TestLastLeaderContactAcrossTransfers's cluster shutdown.
		MaxRPCsInFlight: 1,
	}), nil
}

// Partition cuts every link between a node in group and a node outside it,
// in both directions, replacing the previous partition. all lists every
// node id of the cluster.
func (nw *Network) Partition(all []string, group ...string) {
	in := make(map[string]bool, len(group))
	for _, id := range group {
		in[id] = true
	}
	nw.mu.Lock()
	nw.cut = make(map[link]bool)
	for _, a := range all {
		for _, b := range all {
			if in[a] != in[b] {
				nw.cut[link{a, b}] = true
			}
		}
	}
	nw.mu.Unlock()
	nw.closeBroken()
}

// Heal removes the partition. Delays and nodes marked down stay.
func (nw *Network) Heal() {
	nw.mu.Lock()
	nw.cut = make(map[link]bool)
	nw.mu.Unlock()
}

// SetDown cuts (true) or restores (false) every link of node id.
func (nw *Network) SetDown(id string, down bool) {
	nw.mu.Lock()
	if down {
		nw.down[id] = true
	} else {
		delete(nw.down, id)
	}
	nw.mu.Unlock()
	if down {
		nw.closeBroken()
	}
}

// Delay holds bytes sent from → to for d (one way); 0 removes the delay.
func (nw *Network) Delay(from, to string, d time.Duration) {
	nw.mu.Lock()
	if d <= 0 {
		delete(nw.delay, link{from, to})
	} else {
		nw.delay[link{from, to}] = d
	}
	nw.mu.Unlock()
}

// up reports whether bytes flow from → to. Callers hold nw.mu.
func (nw *Network) up(from, to string) bool {
	return !nw.cut[link{from, to}] && !nw.down[from] && !nw.down[to]
}

func (nw *Network) linkState(from, to string) (bool, time.Duration) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.up(from, to), nw.delay[link{from, to}]
}

// closeBroken closes every open connection that crosses a cut link, in
// either direction (a TCP connection carries requests one way and
// responses the other).
func (nw *Network) closeBroken() {
	nw.mu.Lock()
	var broken []*faultConn
	for c := range nw.conns {
		if !nw.up(c.local, c.remote) || !nw.up(c.remote, c.local) {
			broken = append(broken, c)
		}
	}
	nw.mu.Unlock()
	for _, c := range broken {
		_ = c.Close()
	}
}

func (nw *Network) track(c *faultConn) {
	nw.mu.Lock()
	nw.conns[c] = struct{}{}
	nw.mu.Unlock()
}

func (nw *Network) untrack(c *faultConn) {
	nw.mu.Lock()
	delete(nw.conns, c)
	nw.mu.Unlock()
}

// Layer is one node's hashicorp/raft StreamLayer on a Network.
type Layer struct {
	nw *Network
	id string
	ln hraft.StreamLayer
}

// Accept returns the next incoming connection whose link is up. It reads the
// dialer's header first; connections without a valid one are dropped.
func (l *Layer) Accept() (net.Conn, error) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return nil, err
		}
		remote, err := readHello(conn)
		if err != nil {
			_ = conn.Close()
			continue
		}
		if up, _ := l.nw.linkState(remote, l.id); !up {
			_ = conn.Close()
			continue
		}
		return l.nw.wrap(conn, l.id, remote), nil
	}
}

// Close closes the listener (and the wrapped layer).
func (l *Layer) Close() error { return l.ln.Close() }

// Addr is the listener's address.
func (l *Layer) Addr() net.Addr { return l.ln.Addr() }

// Dial connects to the node at address, failing with ErrLinkDown while the
// link is cut. A delayed link also delays the connection setup by one round
// trip.
func (l *Layer) Dial(address hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	l.nw.mu.Lock()
	remote, ok := l.nw.ids[address]
	l.nw.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("faultnet: dial %s: unknown address", address)
	}
	up, there := l.nw.linkState(l.id, remote)
	upBack, back := l.nw.linkState(remote, l.id)
	if !up || !upBack {
		return nil, fmt.Errorf("faultnet: dial %s → %s: %w", l.id, remote, ErrLinkDown)
	}
	if rtt := there + back; rtt > 0 {
		// Simulated wire latency, not a wait for a condition.
		t := time.NewTimer(rtt)
		<-t.C
	}
	conn, err := l.ln.Dial(address, timeout)
	if err != nil {
		return nil, err
	}
	if err := writeHello(conn, l.id); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return l.nw.wrap(conn, l.id, remote), nil
}

func writeHello(conn net.Conn, id string) error {
	if len(id) > 255 {
		return fmt.Errorf("faultnet: node id %q too long", id)
	}
	b := append([]byte(helloMagic), byte(len(id)))
	b = append(b, id...)
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := conn.Write(b)
	_ = conn.SetWriteDeadline(time.Time{})
	return err
}

func readHello(conn net.Conn) (string, error) {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = conn.SetReadDeadline(time.Time{}) }()
	b := make([]byte, len(helloMagic)+1)
	if _, err := io.ReadFull(conn, b); err != nil {
		return "", err
	}
	if string(b[:len(helloMagic)]) != helloMagic {
		return "", errors.New("faultnet: bad hello")
	}
	id := make([]byte, b[len(helloMagic)])
	if _, err := io.ReadFull(conn, id); err != nil {
		return "", err
	}
	return string(id), nil
}

func (nw *Network) wrap(conn net.Conn, local, remote string) *faultConn {
	c := &faultConn{Conn: conn, nw: nw, local: local, remote: remote, closed: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	nw.track(c)
	return c
}

// faultConn is one end of a connection between two nodes. Writes go
// through the link local → remote: refused when it is cut, queued for the
// link's delay when it has one.
type faultConn struct {
	net.Conn
	nw            *Network
	local, remote string

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []pending // delayed writes, due times non-decreasing
	lastDue time.Time
	pumping bool
	err     error // first write error of the pump
	closed  chan struct{}
	once    sync.Once
}

type pending struct {
	due time.Time
	b   []byte
}

func (c *faultConn) Write(p []byte) (int, error) {
	up, d := c.nw.linkState(c.local, c.remote)
	if !up {
		_ = c.Close()
		return 0, fmt.Errorf("faultnet: write %s → %s: %w", c.local, c.remote, ErrLinkDown)
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	if d == 0 && len(c.queue) == 0 {
		c.mu.Unlock()
		return c.Conn.Write(p)
	}
	due := time.Now().Add(d)
	if due.Before(c.lastDue) {
		due = c.lastDue
	}
	c.lastDue = due
	c.queue = append(c.queue, pending{due: due, b: append([]byte(nil), p...)})
	if !c.pumping {
		c.pumping = true
		go c.pump()
	}
	c.cond.Signal()
	c.mu.Unlock()
	return len(p), nil
}

// pump writes the queued bytes when they are due, in order, until the
// connection closes.
func (c *faultConn) pump() {
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && c.err == nil {
			c.cond.Wait()
		}
		if c.err != nil {
			c.queue = nil
			c.mu.Unlock()
			return
		}
		next := c.queue[0]
		c.mu.Unlock()

		if wait := time.Until(next.due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-c.closed:
				t.Stop()
				return
			}
		}
		if up, _ := c.nw.linkState(c.local, c.remote); !up {
			c.fail(ErrLinkDown)
			return
		}
		if _, err := c.Conn.Write(next.b); err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		c.queue = c.queue[1:]
		c.mu.Unlock()
	}
}

func (c *faultConn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	_ = c.Close()
}

func (c *faultConn) Close() error {
	var err error
	c.once.Do(func() {
		close(c.closed)
		c.mu.Lock()
		if c.err == nil {
			c.err = net.ErrClosed
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		c.nw.untrack(c)
		err = c.Conn.Close()
	})
	return err
}
