/*  casm_metrics_http: /metrics on a port of its own. See
    casm_metrics_http.h.

    The connections live in a fixed table; each event in the epoll set
    carries its slot's index (the listening socket has index
    CONNECTIONS_MAX). A connection reads until the blank line that ends
    the request head, is answered in one buffer, switches to waiting for
    writability until the answer is out, and is closed. Level-triggered
    epoll: whatever is left for the next call is reported again.          */

//  accept4
#define _GNU_SOURCE

#include "casm_metrics_http.h"
#include "casm_config.h"
#include "casm_log.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONNECTIONS_MAX 8
#define REQUEST_MAX 4096            // the request head, at most
#define CONNECTION_MS 5000          // from accept to the last byte out
#define EVENTS_MAX (CONNECTIONS_MAX + 1)

typedef struct {
    int fd;                         // -1 when the slot is free
    char request [REQUEST_MAX];
    size_t received;
    char *answer;                   // head and body, when answering
    size_t answer_size;
    size_t sent;
    int64_t deadline_us;
} connection_t;

struct casm_metrics_http_t {
    casm_metrics_t *registry;
    int listen_fd;
    int epoll_fd;
    int port;
    connection_t connections [CONNECTIONS_MAX];
};

static casm_metrics_http_t *s_process = NULL;


static void
s_close (casm_metrics_http_t *self, connection_t *connection)
{
    if (connection->fd == -1)
        return;
    epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, connection->fd, NULL);
    close (connection->fd);
    connection->fd = -1;
    free (connection->answer);
    connection->answer = NULL;
}

//  Binds and listens; returns the descriptor or -1 (logged).
static int
s_listen (const char *bind_address, int port, int *bound_port)
{
    char service [16];
    snprintf (service, sizeof service, "%d", port);
    struct addrinfo hints;
    memset (&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;

    struct addrinfo *found = NULL;
    int rc = getaddrinfo (bind_address, service, &hints, &found);
    if (rc != 0) {
        casm_error (NULL, NULL, "metrics: cannot resolve METRICS_BIND=%s: "
                    "%s", bind_address, gai_strerror (rc));
        return -1;
    }

    int fd = socket (found->ai_family,
                     found->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                     found->ai_protocol);
    int on = 1;
    if (fd == -1
    ||  setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0
    ||  bind (fd, found->ai_addr, found->ai_addrlen) != 0
    ||  listen (fd, 16) != 0) {
        casm_error (NULL, NULL, "metrics: cannot listen on %s:%d: %s",
                    bind_address, port, strerror (errno));
        if (fd != -1)
            close (fd);
        freeaddrinfo (found);
        return -1;
    }
    freeaddrinfo (found);

    struct sockaddr_storage address;
    socklen_t size = sizeof address;
    *bound_port = port;
    if (getsockname (fd, (struct sockaddr *) &address, &size) == 0)
        *bound_port = address.ss_family == AF_INET6
            ? ntohs (((struct sockaddr_in6 *) &address)->sin6_port)
            : ntohs (((struct sockaddr_in *) &address)->sin_port);
    return fd;
}

casm_metrics_http_t *
casm_metrics_http_new (casm_metrics_t *registry, const char *bind_address,
                       int port)
{
    casm_metrics_http_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->registry = registry;
    self->epoll_fd = -1;
    for (int i = 0; i < CONNECTIONS_MAX; i++)
        self->connections [i].fd = -1;

    self->listen_fd = s_listen (bind_address, port, &self->port);
    if (self->listen_fd == -1) {
        casm_metrics_http_destroy (&self);
        return NULL;
    }
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    struct epoll_event event = {
        .events = EPOLLIN, .data.u32 = CONNECTIONS_MAX
    };
    if (self->epoll_fd == -1
    ||  epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, self->listen_fd,
                   &event) != 0) {
        casm_error (NULL, NULL, "metrics: cannot make an epoll set: %s",
                    strerror (errno));
        casm_metrics_http_destroy (&self);
        return NULL;
    }
    return self;
}

void
casm_metrics_http_destroy (casm_metrics_http_t **self_p)
{
    casm_metrics_http_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < CONNECTIONS_MAX; i++)
        s_close (self, &self->connections [i]);
    if (self->listen_fd != -1)
        close (self->listen_fd);
    if (self->epoll_fd != -1)
        close (self->epoll_fd);
    free (self);
    *self_p = NULL;
}

int
casm_metrics_http_port (casm_metrics_http_t *self)
{
    return self ? self->port : -1;
}

int
casm_metrics_http_fd (casm_metrics_http_t *self)
{
    return self ? self->epoll_fd : -1;
}

void *
casm_metrics_http_reader (casm_metrics_http_t *self)
{
    return self ? &self->epoll_fd : NULL;
}


//  --------------------------------------------------------------------
//  Answers

static const char *
s_reason (int status)
{
    switch (status) {
        case 200: return "OK";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        default:  return "Error";
    }
}

//  Builds the whole answer, head and body, into the connection; a HEAD
//  answer has the head only. body is consumed when owned.
static void
s_answer (connection_t *connection, int status, const char *type,
          char *body, size_t body_size, int owned, int head_only)
{
    char head [256];
    int head_size = snprintf (head, sizeof head,
        "HTTP/1.1 %d %s\r\n"
        "Content-Type: %s\r\n"
        "Content-Length: %zu\r\n"
        "%s"
        "Connection: close\r\n"
        "\r\n",
        status, s_reason (status), type, body_size,
        status == 405 ? "Allow: GET, HEAD\r\n" : "");

    size_t size = (size_t) head_size + (head_only ? 0 : body_size);
    connection->answer = malloc (size);
    if (connection->answer) {
        memcpy (connection->answer, head, (size_t) head_size);
        if (!head_only)
            memcpy (connection->answer + head_size, body, body_size);
        connection->answer_size = size;
    }
    connection->sent = 0;
    if (owned)
        free (body);
}

static void
s_answer_text (connection_t *connection, int status, const char *text)
{
    s_answer (connection, status, "text/plain; charset=utf-8",
              (char *) text, strlen (text), 0, 0);
}

//  The request head is complete: answer it.
static void
s_request (casm_metrics_http_t *self, connection_t *connection)
{
    //  "METHOD SP target SP HTTP/x.y"
    char method [16], target [512], version [16];
    char *line_end = strstr (connection->request, "\r\n");
    if (line_end)
        *line_end = 0;
    if (sscanf (connection->request, "%15s %511s %15s", method, target,
                version) != 3
    ||  strncmp (version, "HTTP/", 5) != 0) {
        s_answer_text (connection, 400, "bad request\n");
        return;
    }
    char *query = strchr (target, '?');
    if (query)
        *query = 0;

    int metrics = strcmp (target, "/metrics") == 0;
    int health = strcmp (target, "/health") == 0;
    int head_only = strcmp (method, "HEAD") == 0;
    if (!metrics && !health) {
        s_answer_text (connection, 404, "not found\n");
        return;
    }
    if (!head_only && strcmp (method, "GET") != 0) {
        s_answer_text (connection, 405, "method not allowed\n");
        return;
    }

    if (health) {
        static const char up [] = "{\"status\":\"up\"}";
        s_answer (connection, 200, "application/json; charset=utf-8",
                  (char *) up, sizeof up - 1, 0, head_only);
        return;
    }
    size_t size = 0;
    char *text = casm_metrics_render (self->registry, &size);
    if (!text) {
        s_answer_text (connection, 500, "out of memory\n");
        return;
    }
    s_answer (connection, 200, CASM_METRICS_CONTENT_TYPE, text, size, 1,
              head_only);
}


//  --------------------------------------------------------------------
//  Connections

static void
s_accept (casm_metrics_http_t *self)
{
    while (1) {
        int fd = accept4 (self->listen_fd, NULL, NULL,
                          SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1)
            return;

        //  All slots taken: the oldest connection makes room, so that
        //  idle clients cannot lock a scraper out.
        int index = 0;
        int oldest = 0;
        while (index < CONNECTIONS_MAX
           &&  self->connections [index].fd != -1) {
            if (self->connections [index].deadline_us
                < self->connections [oldest].deadline_us)
                oldest = index;
            index++;
        }
        if (index == CONNECTIONS_MAX) {
            index = oldest;
            s_close (self, &self->connections [index]);
        }
        struct epoll_event event = {
            .events = EPOLLIN, .data.u32 = (uint32_t) index
        };
        if (epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0) {
            close (fd);
            continue;
        }
        connection_t *connection = &self->connections [index];
        connection->fd = fd;
        connection->received = 0;
        connection->answer = NULL;
        connection->deadline_us = casm_metrics_now_us ()
                                + CONNECTION_MS * 1000LL;
    }
}

//  Sends what the socket takes; closes the connection once all is out.
static void
s_write (casm_metrics_http_t *self, connection_t *connection)
{
    while (connection->sent < connection->answer_size) {
        ssize_t sent = send (connection->fd,
                             connection->answer + connection->sent,
                             connection->answer_size - connection->sent,
                             MSG_NOSIGNAL);
        if (sent > 0) {
            connection->sent += (size_t) sent;
            continue;
        }
        if (sent == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        break;
    }
    shutdown (connection->fd, SHUT_WR);
    s_close (self, connection);
}

static void
s_read (casm_metrics_http_t *self, connection_t *connection, int index)
{
    while (connection->received < REQUEST_MAX - 1) {
        ssize_t got = recv (connection->fd,
                            connection->request + connection->received,
                            REQUEST_MAX - 1 - connection->received, 0);
        if (got == 0 || (got == -1 && errno != EAGAIN
                                   && errno != EWOULDBLOCK)) {
            s_close (self, connection);
            return;
        }
        if (got == -1)
            break;
        connection->received += (size_t) got;
    }
    connection->request [connection->received] = 0;

    if (strstr (connection->request, "\r\n\r\n")
    ||  strstr (connection->request, "\n\n"))
        s_request (self, connection);
    else
    if (connection->received == REQUEST_MAX - 1)
        s_answer_text (connection, 431, "request head too large\n");
    else
        return;

    if (!connection->answer) {
        s_close (self, connection);
        return;
    }
    struct epoll_event event = {
        .events = EPOLLOUT, .data.u32 = (uint32_t) index
    };
    epoll_ctl (self->epoll_fd, EPOLL_CTL_MOD, connection->fd, &event);
    s_write (self, connection);
}

void
casm_metrics_http_serve (casm_metrics_http_t *self)
{
    if (!self)
        return;

    struct epoll_event events [EVENTS_MAX];
    int count = epoll_wait (self->epoll_fd, events, EVENTS_MAX, 0);
    for (int i = 0; i < count; i++) {
        uint32_t index = events [i].data.u32;
        if (index == CONNECTIONS_MAX) {
            s_accept (self);
            continue;
        }
        connection_t *connection = &self->connections [index];
        if (connection->fd == -1)
            continue;
        if (connection->answer)
            s_write (self, connection);
        else
            s_read (self, connection, (int) index);
    }

    //  A client gets a few seconds for the whole exchange.
    int64_t now = casm_metrics_now_us ();
    for (int i = 0; i < CONNECTIONS_MAX; i++)
        if (self->connections [i].fd != -1
        &&  now >= self->connections [i].deadline_us)
            s_close (self, &self->connections [i]);
}


//  --------------------------------------------------------------------
//  The process's endpoint

casm_metrics_http_t *
casm_metrics_http_start (void)
{
    if (!casm_config_str ("METRICS_PORT", NULL))
        return NULL;

    int port = (int) casm_config_int ("METRICS_PORT", 0, 1, 65535);
    const char *bind_address = casm_config_str ("METRICS_BIND", "0.0.0.0");
    casm_metrics_http_stop ();
    s_process = casm_metrics_http_new (NULL, bind_address, port);
    if (!s_process) {
        fprintf (stderr, "casm: cannot serve metrics on METRICS_BIND=%s "
                 "METRICS_PORT=%d\n", bind_address, port);
        exit (2);
    }
    casm_info (NULL, json_pack ("{s:s,s:i}", "bind", bind_address,
                                "port", port),
               "metrics on http://%s:%d/metrics", bind_address, port);
    return s_process;
}

casm_metrics_http_t *
casm_metrics_http_process (void)
{
    return s_process;
}

void
casm_metrics_http_stop (void)
{
    casm_metrics_http_destroy (&s_process);
}
