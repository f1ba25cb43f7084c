package node

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// SIEM export over RELP (issue 13; Config.SIEMSyslogProtocol "relp"): the
// RFC 5424 messages of siem_syslog.go over the Reliable Event Logging
// Protocol (librelp's "RELP - The Reliable Event Logging Protocol"), over
// TLS, so that the collector acknowledges every message and none is lost
// with a connection.
//
// A frame is
//
//	TXNR SP COMMAND SP DATALEN [SP DATA] LF
//
// with TXNR 1..999999999 (then 1 again), COMMAND 1-32 letters, DATALEN the
// octets of DATA. A session opens with "open" offering relp_version=0 and
// commands=syslog; the server answers "rsp" with the open's TXNR and
// "200 OK" followed by its offers, which must include syslog. Each event
// is then one "syslog" frame whose DATA is the RFC 5424 message (no octet
// count); the server answers each with "rsp" and "200 OK" (accepted) or
// "500 ..." (refused). Up to relpWindow frames are unacknowledged at once.
// "close" ends the session; an unsolicited "serverclose" from the server
// ends it too.
//
// Delivery: write returns nil only once every event of the batch was
// answered 200, so the exporter's position moves past an event only after
// the collector acknowledged it. A lost connection, a refusal or a protocol
// error returns an error; the exporter hands the batch over again and the
// sink sends only the events not yet acknowledged, in a new session, with
// new transaction numbers. An event acknowledged just before the connection
// died may be sent twice (the collector's output de-duplicates on
// metadata.uid); none is lost. (RELP acknowledges acceptance by the
// collector: that the collector keeps what it accepted across its own crash
// is its queue configuration, e.g. rsyslog's direct or disk-assisted
// queues.)

const (
	relpWindow     = 128
	relpMaxTxnr    = 999999999
	relpMaxData    = 64 << 10 // of a server frame (responses are short)
	relpIOTimeout  = 30 * time.Second
	relpSoftware   = "tally,1,https://github.com/tallyauth/tally"
	relpCloseGrace = 2 * time.Second
)

// relpSink is the RELP transport of the syslog exporter.
type relpSink struct {
	msg *syslogSink // address, TLS configuration and message format

	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	txnr int // of the last frame sent in this session
	// acked holds the metadata.uid of the events of a batch that failed as
	// a whole but whose own messages were acknowledged: the next write of
	// the batch skips them.
	acked map[string]bool
}

func newRELPSink(s *syslogSink) *relpSink { return &relpSink{msg: s} }

// relpFrame is one frame read from the server.
type relpFrame struct {
	txnr int
	cmd  string
	data []byte
}

// errRELP is a protocol violation by the server.
var errRELP = errors.New("relp: protocol error")

// readRELPFrame reads one frame, refusing anything the grammar does not
// allow and DATA over maxData octets.
func readRELPFrame(r *bufio.Reader, maxData int) (relpFrame, error) {
	var f relpFrame
	// num reads a NUMBER and the byte after it (SP, or LF after DATALEN).
	num := func(what string) (int, byte, error) {
		n, digits := 0, 0
		for {
			c, err := r.ReadByte()
			if err != nil {
				return 0, 0, err
			}
			if c >= '0' && c <= '9' && digits < 9 {
				n = n*10 + int(c-'0')
				digits++
				continue
			}
			if digits == 0 || c != ' ' && !(what == "datalen" && c == '\n') {
				return 0, 0, fmt.Errorf("%w: %s: unexpected %q", errRELP, what, c)
			}
			return n, c, nil
		}
	}
	var err error
	if f.txnr, _, err = num("txnr"); err != nil {
		return f, err
	}
	var cmd []byte
	for {
		c, err := r.ReadByte()
		if err != nil {
			return f, err
		}
		if c == ' ' && len(cmd) > 0 {
			break
		}
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') || len(cmd) == 32 {
			return f, fmt.Errorf("%w: command: unexpected %q", errRELP, c)
		}
		cmd = append(cmd, c)
	}
	f.cmd = string(cmd)
	n, c, err := num("datalen")
	if err != nil {
		return f, err
	}
	if n > maxData {
		return f, fmt.Errorf("%w: %d octets of data (at most %d)", errRELP, n, maxData)
	}
	// DATALEN LF, or DATALEN SP DATA LF (librelp also sends "0 SP LF" for
	// no data, tolerated).
	if c == ' ' {
		if n > 0 {
			f.data = make([]byte, n)
			if _, err := io.ReadFull(r, f.data); err != nil {
				return f, err
			}
		}
		if c, err = r.ReadByte(); err != nil {
			return f, err
		}
	} else if n > 0 {
		return f, fmt.Errorf("%w: data: %d octets announced, none sent", errRELP, n)
	}
	if c != '\n' {
		return f, fmt.Errorf("%w: trailer: unexpected %q", errRELP, c)
	}
	return f, nil
}

// relpResponse splits the DATA of an rsp frame: the three-digit status
// code, the human-readable text, and the lines after it (offers).
func relpResponse(data []byte) (code int, text string, rest []string, err error) {
	line, after, _ := strings.Cut(string(data), "\n")
	if len(line) < 3 {
		return 0, "", nil, fmt.Errorf("%w: response %q", errRELP, line)
	}
	code, cerr := strconv.Atoi(line[:3])
	if cerr != nil || code < 100 || (len(line) > 3 && line[3] != ' ') {
		return 0, "", nil, fmt.Errorf("%w: response %q", errRELP, line)
	}
	if after != "" {
		rest = strings.Split(after, "\n")
	}
	return code, strings.TrimSpace(line[3:]), rest, nil
}

func (s *relpSink) send(cmd string, data []byte) (int, error) {
	s.txnr++
	if s.txnr > relpMaxTxnr {
		s.txnr = 1
	}
	if len(data) == 0 {
		_, err := fmt.Fprintf(s.bw, "%d %s 0\n", s.txnr, cmd)
		return s.txnr, err
	}
	fmt.Fprintf(s.bw, "%d %s %d ", s.txnr, cmd, len(data))
	s.bw.Write(data)
	return s.txnr, s.bw.WriteByte('\n')
}

func (s *relpSink) drop() {
	if s.conn != nil {
		s.conn.Close()
	}
	s.conn, s.br, s.bw = nil, nil, nil
}

// open starts a session: TLS, then the open command and the server's
// offers, which must include the syslog command.
func (s *relpSink) open() error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.msg.addr, s.msg.tls)
	if err != nil {
		return err
	}
	s.conn, s.br, s.bw, s.txnr = c, bufio.NewReader(c), bufio.NewWriter(c), 0
	c.SetDeadline(time.Now().Add(relpIOTimeout))
	txnr, _ := s.send("open", []byte("relp_version=0\nrelp_software="+relpSoftware+"\ncommands=syslog"))
	if err := s.bw.Flush(); err != nil {
		s.drop()
		return err
	}
	f, err := readRELPFrame(s.br, relpMaxData)
	if err == nil && (f.cmd != "rsp" || f.txnr != txnr) {
		err = fmt.Errorf("%w: open answered by %q with txnr %d", errRELP, f.cmd, f.txnr)
	}
	var code int
	var text string
	var offers []string
	if err == nil {
		code, text, offers, err = relpResponse(f.data)
	}
	if err == nil && code != 200 {
		err = fmt.Errorf("relp: open refused: %d %s", code, text)
	}
	if err == nil {
		syslog := false
		for _, o := range offers {
			if k, v, _ := strings.Cut(o, "="); k == "commands" {
				for _, c := range strings.Split(v, ",") {
					syslog = syslog || c == "syslog"
				}
			}
		}
		if !syslog {
			err = fmt.Errorf("relp: the server does not offer the syslog command (%q)", offers)
		}
	}
	if err != nil {
		s.drop()
		return err
	}
	return nil
}

func (s *relpSink) write(evs []SIEMEvent, lines [][]byte) error {
	var todo []int
	for i, e := range evs {
		if !s.acked[e.Metadata.UID] {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		s.acked = nil
		return nil
	}
	if s.conn == nil {
		if err := s.open(); err != nil {
			return fmt.Errorf("relp %s: %w", s.msg.addr, err)
		}
	}
	if s.acked == nil {
		s.acked = map[string]bool{}
	}
	inflight := map[int]int{} // txnr → index in evs
	sent, refused := 0, 0
	var refusal string
	fail := func(err error) error {
		s.drop()
		return fmt.Errorf("relp %s: %d of %d messages acknowledged: %w", s.msg.addr, len(s.acked), len(evs), err)
	}
	for sent < len(todo) || len(inflight) > 0 {
		s.conn.SetDeadline(time.Now().Add(relpIOTimeout))
		for sent < len(todo) && len(inflight) < relpWindow {
			i := todo[sent]
			txnr, err := s.send("syslog", s.msg.message(evs[i], lines[i]))
			if err != nil {
				return fail(err)
			}
			inflight[txnr] = i
			sent++
		}
		if err := s.bw.Flush(); err != nil {
			return fail(err)
		}
		f, err := readRELPFrame(s.br, relpMaxData)
		if err != nil {
			return fail(err)
		}
		switch f.cmd {
		case "rsp":
		case "serverclose":
			return fail(errors.New("the server closed the session"))
		default:
			return fail(fmt.Errorf("%w: unexpected command %q", errRELP, f.cmd))
		}
		i, ok := inflight[f.txnr]
		if !ok {
			return fail(fmt.Errorf("%w: response to txnr %d, which is not awaiting one", errRELP, f.txnr))
		}
		code, text, _, err := relpResponse(f.data)
		if err != nil {
			return fail(err)
		}
		delete(inflight, f.txnr)
		if code == 200 {
			s.acked[evs[i].Metadata.UID] = true
		} else {
			refused++
			refusal = strconv.Itoa(code) + " " + text
		}
	}
	if refused > 0 {
		return fmt.Errorf("relp %s: the server refused %d of %d messages (%s); they are sent again", s.msg.addr, refused, len(evs), refusal)
	}
	s.acked = nil
	return nil
}

// close ends the session with the close command (waiting briefly for its
// answer) and the connection.
func (s *relpSink) close() {
	if s.conn == nil {
		return
	}
	s.conn.SetDeadline(time.Now().Add(relpCloseGrace))
	if txnr, err := s.send("close", nil); err == nil && s.bw.Flush() == nil {
		for {
			f, err := readRELPFrame(s.br, relpMaxData)
			if err != nil || f.txnr == txnr || f.cmd == "serverclose" {
				break
			}
		}
	}
	s.drop()
}
