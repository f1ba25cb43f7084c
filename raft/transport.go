package raft

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
)

// ALPN protocols on a node's cluster port. Raft connections negotiate
// ALPNRaft; internal Connect calls negotiate HTTP/1.1.
const (
	ALPNRaft = "tally-raft/1"
	ALPNHTTP = "http/1.1"
)

// handshakeTimeout bounds the TLS handshake of an accepted connection, so a
// peer that connects and says nothing cannot hold a goroutine.
const handshakeTimeout = 10 * time.Second

// ErrListenerClosed is returned by Accept after Close.
var ErrListenerClosed = errors.New("raft: cluster listener closed")

// ClusterListener is a node's one internal port: a TCP listener that speaks
// mutual TLS with the cluster CA (see NodeTLS) and splits accepted
// connections by ALPN into Raft traffic (StreamLayer, for hashicorp/raft's
// NetworkTransport) and internal HTTP (RPCListener, for the cluster Connect
// service). A connection whose peer has no valid node certificate is closed
// after the failed handshake and reaches neither. Safe for concurrent use.
type ClusterListener struct {
	tcp    net.Listener
	adv    net.Addr
	tls    *NodeTLS
	logger *slog.Logger

	raftConns chan net.Conn
	rpcConns  chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	raftOnce  sync.Once
	raftDone  chan struct{}
	rpcOnce   sync.Once
	rpcDone   chan struct{}
	wg        sync.WaitGroup

	peerCheck atomic.Pointer[func(nodeID string) error] // SetPeerCheck
}

// ListenCluster binds bind ("127.0.0.1:0" for an ephemeral port) and serves
// mutual TLS with t. advertise is the address peers dial; empty means the
// bound address, which must then not be unspecified.
func ListenCluster(bind, advertise string, t *NodeTLS, logger *slog.Logger) (*ClusterListener, error) {
	if t == nil {
		return nil, errors.New("raft: ListenCluster: NodeTLS is required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tcp, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft: listen: %w", err)
	}
	var adv net.Addr = tcp.Addr()
	if host, port, serr := net.SplitHostPort(advertise); serr == nil && host != "" && net.ParseIP(host) == nil {
		// A host name stays a host name: peers resolve it when they dial,
		// so the address survives a new IP (a rescheduled pod) and matches
		// the DNS name in the node certificate.
		if p, perr := strconv.Atoi(port); perr != nil || p <= 0 || p > 65535 {
			tcp.Close()
			return nil, fmt.Errorf("raft: advertise address %q: bad port", advertise)
		}
		adv = hostAddr(advertise)
	} else {
		if advertise != "" {
			if adv, err = net.ResolveTCPAddr("tcp", advertise); err != nil {
				tcp.Close()
				return nil, fmt.Errorf("raft: advertise address: %w", err)
			}
		}
		if ta, ok := adv.(*net.TCPAddr); !ok || ta.IP == nil || ta.IP.IsUnspecified() {
			tcp.Close()
			return nil, fmt.Errorf("raft: advertise address %v is not dialable; set it", adv)
		}
	}
	l := &ClusterListener{
		tcp: tcp, adv: adv, tls: t, logger: logger,
		raftConns: make(chan net.Conn), rpcConns: make(chan net.Conn),
		done: make(chan struct{}), raftDone: make(chan struct{}), rpcDone: make(chan struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Addr is the advertised address.
func (l *ClusterListener) Addr() net.Addr { return l.adv }

// hostAddr is an advertised address given as host name:port.
type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

// TLS is the node identity the listener serves with.
func (l *ClusterListener) TLS() *NodeTLS { return l.tls }

// Close stops accepting, closes the TCP listener and waits for handshakes in
// progress. Connections already handed out stay open. Idempotent.
func (l *ClusterListener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.tcp.Close()
		l.wg.Wait()
	})
	return err
}

func (l *ClusterListener) acceptLoop() {
	defer l.wg.Done()
	conf := l.tls.ServerConfig(ALPNRaft, ALPNHTTP)
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.logger.Warn("cluster listener accept failed", "err", err)
			select {
			case <-l.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		l.wg.Add(1)
		go l.handshake(tls.Server(c, conf))
	}
}

// handshake completes the TLS handshake and routes the connection.
func (l *ClusterListener) handshake(c *tls.Conn) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	go func() {
		select {
		case <-l.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := c.HandshakeContext(ctx); err != nil {
		l.logger.Warn("rejected a cluster connection", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	ch, side := l.rpcConns, l.rpcDone
	var out net.Conn = c
	if c.ConnectionState().NegotiatedProtocol == ALPNRaft {
		ch, side = l.raftConns, l.raftDone
		id := NodeIDOf(c.ConnectionState().PeerCertificates[0])
		if err := l.checkPeer(id); err != nil {
			l.logger.Warn("refused a raft connection", "remote", c.RemoteAddr().String(), "peer", id, "err", err)
			c.Close()
			return
		}
		out = &checkedConn{Conn: c, l: l, id: id}
	}
	select {
	case ch <- out:
	case <-side:
		c.Close()
	case <-l.done:
		c.Close()
	}
}

// SetPeerCheck installs check, which decides whether a peer (by the node id
// of its verified certificate) may use the Raft side of the port: it is
// called when a Raft connection is accepted and again before every read
// from it, so a peer refused later (a removed node) loses the connections
// it already has. A non-nil error refuses the peer and is logged. The
// internal HTTP side applies its own check per request (see node). nil
// removes the check.
func (l *ClusterListener) SetPeerCheck(check func(nodeID string) error) {
	if check == nil {
		l.peerCheck.Store(nil)
		return
	}
	l.peerCheck.Store(&check)
}

func (l *ClusterListener) checkPeer(id string) error {
	if p := l.peerCheck.Load(); p != nil {
		return (*p)(id)
	}
	return nil
}

// checkedConn is an accepted Raft connection that applies the listener's
// peer check before each read.
type checkedConn struct {
	net.Conn
	l       *ClusterListener
	id      string
	refused atomic.Bool
}

func (c *checkedConn) Read(b []byte) (int, error) {
	if err := c.l.checkPeer(c.id); err != nil {
		if !c.refused.Swap(true) {
			c.l.logger.Warn("closed a raft connection of a refused peer", "remote", c.RemoteAddr().String(), "peer", c.id, "err", err)
		}
		c.Conn.Close()
		return 0, err
	}
	return c.Conn.Read(b)
}

// StreamLayer is the Raft side of the listener, for
// hraft.NewNetworkTransportWithConfig. Its Dial speaks mutual TLS with ALPN
// ALPNRaft. Closing it stops only the Raft side.
func (l *ClusterListener) StreamLayer() hraft.StreamLayer { return &streamLayer{l} }

// RPCListener is the internal-HTTP side of the listener: every connection
// it returns is a *tls.Conn whose peer presented a node certificate.
// Closing it stops only the HTTP side.
func (l *ClusterListener) RPCListener() net.Listener { return &rpcListener{l} }

type streamLayer struct{ l *ClusterListener }

func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.l.raftConns:
		return c, nil
	case <-s.l.raftDone:
		return nil, ErrListenerClosed
	case <-s.l.done:
		return nil, ErrListenerClosed
	}
}

func (s *streamLayer) Close() error {
	s.l.raftOnce.Do(func() { close(s.l.raftDone) })
	return nil
}

func (s *streamLayer) Addr() net.Addr { return s.l.adv }

func (s *streamLayer) Dial(addr hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.l.tls.DialContext(ctx, string(addr), ALPNRaft)
}

type rpcListener struct{ l *ClusterListener }

func (r *rpcListener) Accept() (net.Conn, error) {
	select {
	case c := <-r.l.rpcConns:
		return c, nil
	case <-r.l.rpcDone:
		return nil, ErrListenerClosed
	case <-r.l.done:
		return nil, ErrListenerClosed
	}
}

func (r *rpcListener) Close() error {
	r.l.rpcOnce.Do(func() { close(r.l.rpcDone) })
	return nil
}

func (r *rpcListener) Addr() net.Addr { return r.l.adv }

// DialContext opens a mutual-TLS connection to a peer's cluster port,
// offering the ALPN protocol proto, and fails unless the peer presents a node
// certificate of the cluster CA valid for the dialled host and agrees on
// proto.
func (t *NodeTLS) DialContext(ctx context.Context, addr, proto string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("raft: dial %q: %w", addr, err)
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, t.ClientConfig(host, proto))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("raft: tls handshake with %s: %w", addr, err)
	}
	if got := c.ConnectionState().NegotiatedProtocol; got != proto {
		c.Close()
		return nil, fmt.Errorf("raft: %s negotiated protocol %q, want %q", addr, got, proto)
	}
	return c, nil
}

// HTTPTransport returns an HTTP transport for internal calls to peers'
// cluster ports (URLs "https://<raft address>"), authenticated with this
// node's certificate. The caller owns it (CloseIdleConnections when done).
func (t *NodeTLS) HTTPTransport() *http.Transport {
	return &http.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return t.DialContext(ctx, addr, ALPNHTTP)
		},
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
}
