package faultnet

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// echo serves l, echoing every accepted connection, until l closes.
func echo(l *Layer) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			_, _ = io.Copy(conn, conn)
		}()
	}
}

func roundTrip(t *testing.T, conn net.Conn, msg string) error {
	t.Helper()
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		t.Fatalf("echo %q, want %q", buf, msg)
	}
	return nil
}

func TestNetworkCutDelayHeal(t *testing.T) {
	nw := NewNetwork()
	a, err := nw.Listen("a", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := nw.Listen("b", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	go echo(b)
	addrB := hraft.ServerAddress(b.Addr().String())

	conn, err := a.Dial(addrB, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, conn, "hello"); err != nil {
		t.Fatal(err)
	}

	// A one-way delay holds the bytes at least that long; order is kept
	// across several writes.
	nw.Delay("a", "b", 40*time.Millisecond)
	start := time.Now()
	for _, m := range []string{"one", "two", "three"} {
		if _, err := conn.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, len("onetwothree"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != "onetwothree" {
		t.Fatalf("got %q", buf)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("delayed round trip took %v, want at least 40ms", d)
	}
	nw.Delay("a", "b", 0)

	// A partition closes the connection and refuses dials both ways.
	nw.Partition([]string{"a", "b"}, "a")
	if err := roundTrip(t, conn, "lost"); err == nil {
		t.Fatal("round trip across a partition succeeded")
	}
	if _, err := a.Dial(addrB, time.Second); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("dial across a partition: %v", err)
	}
	if _, err := b.Dial(hraft.ServerAddress(a.Addr().String()), time.Second); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("dial back across a partition: %v", err)
	}

	nw.Heal()
	conn2, err := a.Dial(addrB, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if err := roundTrip(t, conn2, "again"); err != nil {
		t.Fatal(err)
	}

	// A node marked down is unreachable until it is marked up again.
	nw.SetDown("b", true)
	if _, err := a.Dial(addrB, time.Second); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("dial a down node: %v", err)
	}
	nw.SetDown("b", false)
	conn3, err := a.Dial(addrB, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn3.Close()
	if err := roundTrip(t, conn3, "back"); err != nil {
		t.Fatal(err)
	}
}

// A connection without the header (not from a Layer) is dropped.
func TestLayerRejectsStrangers(t *testing.T) {
	nw := NewNetwork()
	b, err := nw.Listen("b", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	go echo(b)
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 16)); err == nil {
		t.Fatalf("a stranger got %d bytes back", n)
	}
}
