// Command wanlink is the link between regions in the compose cluster: a
// TCP forwarder that carries one node's ports to the other regions'
// networks, optionally holding every byte for a fixed one-way delay like a
// long wire.
//
// Each node of deploy/compose lives on its region's Docker network only; a
// wanlink container per node sits on every region network, answers there
// under the node's name (a DNS alias) and forwards to the node on its home
// network. So `docker network disconnect west node3` cuts node3 off from
// every other node, as a region losing its uplinks would, and the link
// itself can be cut (`docker network disconnect east wan-node3`) or slowed
// (--delay).
//
//	wanlink --forward 7946=node3.west:7946 --forward 6222=node3.west:6222 --delay 5ms
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

type forwards []string

func (f *forwards) String() string     { return strings.Join(*f, ",") }
func (f *forwards) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var fw forwards
	flag.Var(&fw, "forward", "`PORT=HOST:PORT`: accept on PORT (every interface) and forward to HOST:PORT, resolved per connection (repeatable)")
	delay := flag.Duration("delay", 0, "one-way delay added to every byte in each direction")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if len(fw) == 0 || *delay < 0 {
		fmt.Fprintln(os.Stderr, "wanlink: give at least one --forward PORT=HOST:PORT and a non-negative --delay")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	for _, f := range fw {
		port, target, ok := strings.Cut(f, "=")
		if !ok || port == "" || target == "" {
			fmt.Fprintf(os.Stderr, "wanlink: --forward %q: want PORT=HOST:PORT\n", f)
			os.Exit(2)
		}
		ln, err := net.Listen("tcp", ":"+port)
		if err != nil {
			fmt.Fprintln(os.Stderr, "wanlink:", err)
			os.Exit(1)
		}
		go func() { <-ctx.Done(); ln.Close() }()
		log.Info("forwarding", "port", port, "target", target, "delay", delay.String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			serve(ctx, ln, target, *delay, log)
		}()
	}
	wg.Wait()
}

func serve(ctx context.Context, ln net.Listener, target string, delay time.Duration, log *slog.Logger) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				log.Error("accept", "err", err)
			}
			return
		}
		go func() {
			defer c.Close()
			d := net.Dialer{Timeout: 3 * time.Second}
			u, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				// The node is down or cut off: the caller sees a closed
				// connection, as across a broken link.
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			go func() { pipe(u, c, delay); done <- struct{}{} }()
			go func() { pipe(c, u, delay); done <- struct{}{} }()
			<-done
		}()
	}
}

// pipe copies src to dst, each chunk delivered delay after it was read;
// when either side fails both are closed.
func pipe(dst, src net.Conn, delay time.Duration) {
	defer dst.Close()
	defer src.Close()
	if delay == 0 {
		_, _ = io.Copy(dst, src)
		return
	}
	type chunk struct {
		at time.Time
		b  []byte
	}
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{time.Now().Add(delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		if w := time.Until(ch.at); w > 0 {
			time.Sleep(w)
		}
		if _, err := dst.Write(ch.b); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				src.Close()
			}
			return
		}
	}
}
