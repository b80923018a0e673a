package hypervisor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// roundTrip sends one HTTP/1.1 request on a fresh connection to the unix
// socket and returns the answer's status and body (at most 1 MiB).
//
// We speak HTTP here rather than link net/http: the hypervisors' APIs are
// plain HTTP/1.1 on a unix socket with small JSON bodies, and net/http
// would bring TLS, x509 and HTTP/2 into every credvm command — a measured
// part of the start-up that `credvm list` and `credvm run` pay each time
// (bench/README.md). One request per connection (Connection: close), an
// answer framed by Content-Length, chunked encoding or the end of the
// connection — what cloud-hypervisor's micro_http, firecracker's server
// and Go's own net/http server send. Tests run it against net/http's
// server and against the API test double.
func roundTrip(socket string, timeout time.Duration, method, path string, body []byte) (int, []byte, error) {
	conn, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n", method, path)
	if body != nil {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	req.WriteString("\r\n")
	req.Write(body)
	defer clear(req.Bytes())
	if _, err := conn.Write(req.Bytes()); err != nil {
		return 0, nil, err
	}
	return readResponse(bufio.NewReader(conn))
}

// maxResponse bounds what is read of an answer.
const maxResponse = 1 << 20

func readResponse(br *bufio.Reader) (int, []byte, error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return 0, nil, fmt.Errorf("reading the answer: %w", err)
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || status < 100 || status > 999 {
		return 0, nil, fmt.Errorf("not an HTTP answer: %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return 0, nil, fmt.Errorf("reading the answer's headers: %w", err)
	}
	var body io.Reader = br
	switch {
	case strings.EqualFold(hdr.Get("Transfer-Encoding"), "chunked"):
		body = &chunked{r: br}
	case hdr.Get("Content-Length") != "":
		n, err := strconv.ParseInt(hdr.Get("Content-Length"), 10, 64)
		if err != nil || n < 0 {
			return 0, nil, fmt.Errorf("bad Content-Length %q", hdr.Get("Content-Length"))
		}
		body = io.LimitReader(br, n)
	case status == 204 || status == 304 || status/100 == 1:
		return status, nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(body, maxResponse))
	if err != nil {
		return 0, nil, fmt.Errorf("reading the answer's body: %w", err)
	}
	return status, b, nil
}

// chunked decodes the chunked transfer coding (RFC 9112 §7.1); trailers
// are read and dropped.
type chunked struct {
	r    *bufio.Reader
	left int64
	done bool
}

func (c *chunked) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, io.ErrUnexpectedEOF
		}
		size, _, _ := strings.Cut(strings.TrimSpace(line), ";")
		n, err := strconv.ParseInt(size, 16, 64)
		if err != nil || n < 0 {
			return 0, errors.New("bad chunk size")
		}
		if n == 0 {
			c.done = true
			for { // trailers, then the empty line
				l, err := c.r.ReadString('\n')
				if err != nil || strings.TrimSpace(l) == "" {
					break
				}
			}
			return 0, io.EOF
		}
		c.left = n
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left == 0 && err == nil {
		if _, err := c.r.Discard(2); err != nil { // the chunk's CRLF
			return n, io.ErrUnexpectedEOF
		}
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
