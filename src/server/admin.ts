// The node's admin HTTP API: GET /api/v1/status (JSON), GET /metrics (Prometheus text),
// GET / (a small dashboard page), online verify of a volume this node is primary of:
// POST /api/v1/volumes/<name>/verify (body `{"repair": true}` to repair too) starts one
// and answers 202 with its report; GET on the same path returns the report as it goes;
// and the role changes: POST /api/v1/volumes/<name>/promote (body `{"force": true}` to
// promote a copy that may lack acknowledged writes) and POST .../demote, each answering
// 200 with what it did, or an error with its code (404 unknown volume, 409 refused); and
// POST .../resolve (body `{"discard": "<node>"}`), this node's part in resolving a split
// brain (see VolumeRoles.resolve).

import http from 'node:http';
import { constants } from '../constants.js';
import { busyPollStats } from '../io/busy-poll.js';
import type { Address } from '../control/config.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { LogStatus } from '../storage/write-log.js';
import type { NodeStatus, PeerReplicationStatus, VolumeStatus } from './status.js';
import { closeServer, listen } from './listen.js';
import { diskState, type NodeView, type ServedVolume } from './served-volume.js';
import { mayLack } from '../core/promotion.js';

export function nodeStatus(node: NodeView): NodeStatus {
  const poll = busyPollStats();
  return {
    cluster: node.config.cluster,
    node: node.node.id,
    uptimeSeconds: Math.round((Date.now() - node.startedAtMs) / 1000),
    nbd: node.nbdAddress === null ? '' : `${node.nbdAddress.host}:${node.nbdAddress.port}`,
    connections: node.connectionCount,
    counters: {
      ...node.counters,
      ...node.peerCounters,
      ...node.heartbeatCounters,
      slowInlineWrites: node.ioActivity.slowWrites,
      busyPollHits: poll.hits,
      busyPollMisses: poll.misses,
      busyPollYields: poll.yields,
      busyPollSeconds: poll.pollSeconds,
    },
    nodes: node.heartbeatStatus().map((peer) => ({ node: peer.peer, state: peer.state, lastHeardAgoMs: peer.lastHeardAgoMs, incarnation: peer.incarnation })),
    witness: node.witnessStatus(),
    coordination: node.coordinationStatus(),
    hooks: { ...node.hookCounts },
    volumes: [...node.volumes.values()].map((served) => {
      const { config, identity, volume, role, target } = served;
      const mirror = served.mirrored?.engine ?? null;
      const source = target === null ? null : target.status();
      return {
        name: config.name,
        uuid: identity.uuid,
        sizeBytes: identity.sizeBytes,
        mode: config.mode,
        role,
        epoch: volume.replica.epoch,
        disk: diskState(served),
        readOnly: config.readOnly,
        primary: config.mode === 'local' ? node.node.id : volume.replica.history.primaryNow,
        changing: served.changing,
        quorum: quorumStatus(node, served),
        splitBrain: served.splitBrain === null ? null : { ...served.splitBrain, here: { ...served.splitBrain.here }, other: { ...served.splitBrain.other } },
        diskless: served.mirrored?.engine.diskless ?? null,
        attach: served.mirrored?.attaching === null || served.mirrored === null ? null : { ...served.mirrored.attaching },
        stats: { ...volume.stats },
        log: volume.log.status(),
        peers: (mirror?.status() ?? []).map((peer) => ({
          node: peer.peer,
          replication: peer.replication,
          disk: peer.disk,
          ackedSeq: peer.ackedSeq,
          durableSeq: peer.durableSeq,
          syncedSeq: peer.syncedSeq,
          lagBytes: peer.lagBytes,
          outOfSyncBytes: peer.outOfSyncBytes,
          resyncNeeded: peer.resyncNeeded,
          resync: peer.resync,
          connections: peer.connections.filter((link) => link.state === 'up').length,
        })),
        source:
          source === null
            ? null
            : {
                node: source.source,
                connected: source.session,
                storedSeq: source.storedSeq,
                syncedCpSeq: source.syncedCpSeq,
                // Whether a promotion of this copy can lose acknowledged writes (VolumeRoles.promote says why).
                promotable: mayLack(config, target?.contact ?? null, node.node.id) === null,
              },
      };
    }),
  };
}

function metrics(status: NodeStatus): string {
  const lines: string[] = [];
  const labels = `node="${status.node}"`;
  const metric = (name: string, type: string, help: string, samples: [string, number][]): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [sampleLabels, value] of samples) lines.push(`${name}{${sampleLabels}} ${value}`);
  };
  metric('blockmirror_up', 'gauge', 'The node is serving.', [[labels, 1]]);
  metric('blockmirror_nbd_connections', 'gauge', 'Open NBD client connections.', [[labels, status.connections]]);
  metric('blockmirror_nbd_requests_total', 'counter', 'NBD requests received.', [[labels, status.counters['requests'] ?? 0]]);
  metric('blockmirror_nbd_error_replies_total', 'counter', 'NBD requests answered with an error.', [
    [labels, status.counters['errorReplies'] ?? 0],
  ]);
  metric('blockmirror_nbd_protocol_errors_total', 'counter', 'Connections closed for protocol violations.', [
    [labels, status.counters['protocolErrors'] ?? 0],
  ]);
  metric(
    'blockmirror_slow_inline_writes_total',
    'counter',
    `Small writes on the event loop that took over ${constants.inlineWriteSlowMs} ms (small writes then use the thread pool for ${constants.inlineWriteSlowBackoffMs} ms).`,
    [[labels, status.counters['slowInlineWrites'] ?? 0]],
  );
  metric(
    'blockmirror_busy_poll_hits_total',
    'counter',
    'Waits for work that ended while the event loop was polling (busyPollMicros), so it did not sleep.',
    [[labels, status.counters['busyPollHits'] ?? 0]],
  );
  metric('blockmirror_busy_poll_misses_total', 'counter', 'Waits that outlasted the poll; the event loop then slept.', [
    [labels, status.counters['busyPollMisses'] ?? 0],
  ]);
  metric('blockmirror_busy_poll_yields_total', 'counter', 'Polls ended because another thread needed the CPU; the event loop then slept.', [
    [labels, status.counters['busyPollYields'] ?? 0],
  ]);
  metric('blockmirror_busy_poll_seconds_total', 'counter', 'CPU time the event loop spent polling for work.', [
    [labels, status.counters['busyPollSeconds'] ?? 0],
  ]);
  const perVolume = (stat: string, name: string, type: string, help: string): void =>
    metric(
      name,
      type,
      help,
      status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, volume.stats[stat] ?? 0]),
    );
  perVolume('readOps', 'blockmirror_volume_read_ops_total', 'counter', 'Reads executed.');
  perVolume('readBytes', 'blockmirror_volume_read_bytes_total', 'counter', 'Bytes read.');
  perVolume('writeOps', 'blockmirror_volume_write_ops_total', 'counter', 'Writes executed.');
  perVolume('writeBytes', 'blockmirror_volume_write_bytes_total', 'counter', 'Bytes written.');
  perVolume('zeroOps', 'blockmirror_volume_zero_ops_total', 'counter', 'Write-zeroes executed.');
  perVolume('trimOps', 'blockmirror_volume_trim_ops_total', 'counter', 'Trims executed.');
  perVolume('flushOps', 'blockmirror_volume_flush_ops_total', 'counter', 'Flush and FUA requests.');
  perVolume('errors', 'blockmirror_volume_io_errors_total', 'counter', 'Disk operations that failed.');
  const perLog = (stat: Exclude<keyof LogStatus, 'needsFullResync'>, name: string, type: string, help: string): void =>
    metric(
      name,
      type,
      help,
      status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, volume.log[stat]]),
    );
  perLog('lastSeq', 'blockmirror_log_last_seq', 'gauge', 'Sequence number of the last entry appended to the write log.');
  perLog('durableSeq', 'blockmirror_log_durable_seq', 'gauge', 'Every entry up to this sequence number is durable in the log.');
  perLog('cpSeq', 'blockmirror_log_cp_seq', 'gauge', 'Sequence number covered by the last consistency point.');
  perLog('bytesUsed', 'blockmirror_log_used_bytes', 'gauge', 'Log bytes holding entries a consistency point has not released.');
  perLog('syncs', 'blockmirror_log_syncs_total', 'counter', 'Log fdatasync calls (concurrent FLUSH/FUA requests share one).');
  perLog('syncsAhead', 'blockmirror_log_syncs_ahead_total', 'counter', 'Log syncs asked for as soon as the reply to a write had left, a flush being expected after it (one already running may cover them).');
  perLog('checkpoints', 'blockmirror_log_checkpoints_total', 'counter', 'Consistency points taken.');
  perLog('stalls', 'blockmirror_log_stalls_total', 'counter', 'Times writes waited for a consistency point to free log space.');
  perLog('stallMs', 'blockmirror_log_stall_milliseconds_total', 'counter', 'Time writes spent waiting for log space.');
  perLog('lastCheckpointMs', 'blockmirror_log_last_checkpoint_milliseconds', 'gauge', 'Duration of the last consistency point.');
  metric(
    'blockmirror_volume_cp_age_seconds',
    'gauge',
    'Seconds since the last consistency point.',
    status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, Math.max(0, Math.round((Date.now() - volume.log.cpTimeMs) / 1000))]),
  );
  metric('blockmirror_peer_protocol_errors_total', 'counter', 'Peer connections closed for a bad frame or message.', [
    [labels, status.counters['peerProtocolErrors'] ?? 0],
  ]);
  metric('blockmirror_peer_refusals_total', 'counter', 'Peer connections refused or failed during the handshake.', [
    [labels, status.counters['peerRefusals'] ?? 0],
  ]);
  metric('blockmirror_heartbeats_sent_total', 'counter', 'Heartbeat datagrams sent.', [[labels, status.counters['heartbeatsSent'] ?? 0]]);
  metric('blockmirror_heartbeats_received_total', 'counter', 'Heartbeat datagrams accepted.', [[labels, status.counters['heartbeatsReceived'] ?? 0]]);
  metric('blockmirror_heartbeats_dropped_total', 'counter', 'Heartbeat datagrams dropped: forged, replayed, garbled or foreign.', [
    [labels, status.counters['heartbeatsDropped'] ?? 0],
  ]);
  metric(
    'blockmirror_peer_node_up',
    'gauge',
    '1 while the failure detector trusts the peer node (its heartbeats arrive).',
    status.nodes.map((peer): [string, number] => [`${labels},peer="${peer.node}"`, peer.state === 'up' ? 1 : 0]),
  );
  const perPeer = (name: string, help: string, value: (peer: PeerReplicationStatus) => number): void =>
    metric(
      name,
      'gauge',
      help,
      status.volumes.flatMap((volume) => volume.peers.map((peer): [string, number] => [`${labels},volume="${volume.name}",peer="${peer.node}"`, value(peer)])),
    );
  perPeer('blockmirror_peer_streaming', '1 while the primary streams the volume to the peer.', (peer) => (peer.replication === 'streaming' ? 1 : 0));
  perPeer('blockmirror_peer_up_to_date', '1 while the peer\'s copy is up to date.', (peer) => (peer.disk === 'up-to-date' ? 1 : 0));
  perPeer('blockmirror_peer_acked_seq', 'Every log entry up to this sequence number is stored on the peer.', (peer) => peer.ackedSeq);
  perPeer('blockmirror_peer_lag_bytes', 'Bytes of log entries the peer has not acknowledged.', (peer) => peer.lagBytes);
  perPeer('blockmirror_peer_out_of_sync_bytes', 'Bytes of the volume the peer may lack.', (peer) => peer.outOfSyncBytes);
  metric(
    'blockmirror_volume_epoch',
    'gauge',
    'The epoch of the volume\'s history this node is in (a promotion begins the next one).',
    status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, volume.epoch]),
  );
  metric(
    'blockmirror_volume_quorum',
    'gauge',
    'For quorum: majority: 1 while this node has a majority (on the primary: its writes are acknowledged; on a secondary: it may be promoted).',
    status.volumes.flatMap((volume): [string, number][] => (volume.quorum === null ? [] : [[`${labels},volume="${volume.name}"`, volume.quorum.ok ? 1 : 0]])),
  );
  metric(
    'blockmirror_volume_primary',
    'gauge',
    '1 while this node is the volume\'s primary (takes its writes).',
    status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, volume.role === 'primary' ? 1 : 0]),
  );
  metric(
    'blockmirror_volume_promotable',
    'gauge',
    'On a secondary: 1 while a promotion of its copy cannot lose writes the primary acknowledged (it was in sync at its last contact).',
    status.volumes.flatMap((volume): [string, number][] => (volume.source === null ? [] : [[`${labels},volume="${volume.name}"`, volume.source.promotable ? 1 : 0]])),
  );
  metric(
    'blockmirror_volume_diskless',
    'gauge',
    'On a primary: 1 while its own disk has failed and the volume is served from its peers (reads over the peer link, writes acknowledged once a peer holds them).',
    status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, volume.diskless === null ? 0 : 1]),
  );
  metric(
    'blockmirror_volume_split_brain',
    'gauge',
    '1 while this copy and another went separate ways, each with writes the other lacks (status names the peer and what each holds); 0 otherwise.',
    status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, volume.splitBrain === null ? 0 : 1]),
  );
  metric(
    'blockmirror_volume_size_bytes',
    'gauge',
    'Volume size.',
    status.volumes.map((volume) => [`${labels},volume="${volume.name}"`, volume.sizeBytes]),
  );
  return lines.join('\n') + '\n';
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c] ?? c);
}

function replicationText(volume: VolumeStatus): string {
  if (volume.source !== null) return `from ${volume.source.node}: ${volume.source.connected ? 'streaming' : 'disconnected'}`;
  if (volume.peers.length === 0) return 'not mirrored';
  return volume.peers.map((peer) => `to ${peer.node}: ${peer.replication}, ${peer.disk}, lag ${peer.lagBytes} B`).join('; ');
}

function dashboard(status: NodeStatus): string {
  const rows = status.volumes
    .map(
      (v) =>
        `<tr><td>${escapeHtml(v.name)}</td><td>${v.sizeBytes}</td><td>${v.mode}</td><td>${v.role}</td>` +
        `<td>${v.disk}</td><td>${v.stats['writeOps'] ?? 0}</td><td>${v.stats['readOps'] ?? 0}</td>` +
        `<td>${escapeHtml(replicationText(v))}</td></tr>`,
    )
    .join('');
  return `<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>blockmirror ${escapeHtml(status.node)}</title>
<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}</style>
</head><body><h1>blockmirror node ${escapeHtml(status.node)}</h1>
<p>cluster ${escapeHtml(status.cluster)} · NBD ${escapeHtml(status.nbd)} · ${status.connections} connection(s) · up ${status.uptimeSeconds}s</p>
<table><tr><th>volume</th><th>size (bytes)</th><th>mode</th><th>role</th><th>disk</th><th>writes</th><th>reads</th><th>replication</th></tr>${rows}</table>
</body></html>`;
}

export class AdminServer {
  private server: http.Server | null = null;

  constructor(
    private readonly node: NodeView,
    private readonly log: Logger,
  ) {}

  async start(address: Address): Promise<Address> {
    this.server = http.createServer((request, response) => this.handle(request, response));
    this.server.keepAliveTimeout = 1000;
    return listen(this.server as unknown as import('node:net').Server, address, 'admin');
  }

  async stop(): Promise<void> {
    if (this.server === null) return;
    this.server.closeAllConnections();
    await closeServer(this.server);
  }

  private handle(request: http.IncomingMessage, response: http.ServerResponse): void {
    const url = request.url ?? '/';
    const verify = /^\/api\/v1\/volumes\/([^/?]+)\/verify$/.exec(url);
    if (verify !== null) {
      this.verify(decodeURIComponent(verify[1] ?? ''), request, response);
      return;
    }
    const roleChange = /^\/api\/v1\/volumes\/([^/?]+)\/(promote|demote|resolve|attach)$/.exec(url);
    if (roleChange !== null) {
      this.changeRole(decodeURIComponent(roleChange[1] ?? ''), roleChange[2] as 'promote' | 'demote' | 'resolve' | 'attach', request, response);
      return;
    }
    if (request.method !== 'GET') return methodNotAllowed(response, 'GET');
    const status = nodeStatus(this.node);
    if (url === '/api/v1/status') {
      answerJson(response, 200, status);
    } else if (url === '/metrics') {
      response.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(metrics(status));
    } else if (url === '/') {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(dashboard(status));
    } else {
      this.log.debug('admin: not found', { url });
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  }

  /** POST .../promote (`{"force": true}` allowed), .../demote, or .../resolve (`{"discard": "<node>"}`). */
  private changeRole(name: string, change: 'promote' | 'demote' | 'resolve' | 'attach', request: http.IncomingMessage, response: http.ServerResponse): void {
    const answer = (code: number, body: unknown): void => answerJson(response, code, body);
    if (request.method !== 'POST') return methodNotAllowed(response, 'POST');
    readSmallBody(request, (body) => {
      let done: Promise<unknown>;
      try {
        if (change === 'resolve') done = this.node.resolve(name, discardField(body));
        else if (change === 'promote') done = this.node.promote(name, booleanFields(body, ['force'])['force'] === true);
        else {
          booleanFields(body, []);
          done = change === 'attach' ? this.node.attach(name) : this.node.demote(name);
        }
      } catch (error) {
        return answer(400, { error: { code: 'ERR_USAGE', message: `bad request body: ${(error as Error).message}` } });
      }
      done.then(
        (result) => answer(200, result),
        (error: unknown) => {
          const code = error instanceof BlockmirrorError ? error.code : 'ERR_INTERNAL';
          const status = code === 'ERR_UNKNOWN_VOLUME' ? 404 : code === 'ERR_ROLE_REFUSED' || code === 'ERR_MAY_LOSE_WRITES' || code === 'ERR_NO_QUORUM' ? 409 : code === 'ERR_COORDINATION' ? 503 : 500;
          this.log.warn(`${change} refused`, { volume: name, code, reason: String((error as Error).message) });
          answer(status, { error: { code, message: (error as Error).message } });
        },
      );
    });
  }

  private verify(name: string, request: http.IncomingMessage, response: http.ServerResponse): void {
    const answer = (code: number, body: unknown): void => answerJson(response, code, body);
    const refuse = (code: number, message: string): void => answer(code, { error: { code: 'ERR_VERIFY_REFUSED', message } });
    const served = this.node.volumes.get(name);
    if (served === undefined) return refuse(404, `no volume ${name} on node ${this.node.node.id}`);
    const mirror = served.mirrored?.engine ?? null;
    if (mirror === null) {
      return refuse(409, served.role === 'secondary' ? `node ${this.node.node.id} is not the primary of ${name} (${served.volume.replica.history.primaryNow ?? 'none'} is)` : `volume ${name} is not mirrored`);
    }
    if (request.method === 'GET') {
      const report = mirror.verifyReport();
      return report === null ? refuse(404, `no verify of ${name} has run since the node started`) : answer(200, report);
    }
    if (request.method !== 'POST') return methodNotAllowed(response, 'GET, POST');
    readSmallBody(request, (body) => {
      let repair = false;
      try {
        repair = booleanFields(body, ['repair'])['repair'] === true;
      } catch (error) {
        return refuse(400, `bad request body: ${(error as Error).message}`);
      }
      try {
        answer(202, mirror.startVerify(repair));
      } catch (error) {
        refuse(409, (error as Error).message);
      }
    });
  }
}

function answerJson(response: http.ServerResponse, code: number, body: unknown): void {
  response.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body, null, 2) + '\n');
}

function methodNotAllowed(response: http.ServerResponse, allow: string): void {
  response.writeHead(405, { 'content-type': 'text/plain', allow }).end('method not allowed\n');
}

/** A request body of boolean fields among `allowed` (empty: `{}`); anything else throws, naming it. */
function booleanFields(body: string, allowed: readonly string[]): Record<string, boolean> {
  const parsed: unknown = body.trim() === '' ? {} : JSON.parse(body);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('expected a JSON object');
  const fields: Record<string, boolean> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (!allowed.includes(key)) throw new Error(`unknown field "${key}"`);
    if (typeof value !== 'boolean') throw new Error(`"${key}" must be true or false`);
    fields[key] = value;
  }
  return fields;
}

/** The body of POST .../resolve: `{"discard": "<node>"}`, nothing else. */
function discardField(body: string): string {
  const parsed: unknown = body.trim() === '' ? {} : JSON.parse(body);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('expected a JSON object');
  const extra = Object.keys(parsed).find((key) => key !== 'discard');
  if (extra !== undefined) throw new Error(`unknown field "${extra}"`);
  const discard = (parsed as { discard?: unknown }).discard;
  if (typeof discard !== 'string' || discard === '') throw new Error('"discard" must name the node whose writes are discarded');
  return discard;
}

/** A small JSON body (at most 1 KiB: a larger one closes the request), then `use`. */
function readSmallBody(request: http.IncomingMessage, use: (body: string) => void): void {
  let body = '';
  request.setEncoding('utf8');
  request.on('data', (chunk: string) => {
    body += chunk;
    if (body.length > 1024) request.destroy();
  });
  request.on('end', () => use(body));
}

/** A `quorum: majority` volume's quorum on this node, as the status reports it. */
function quorumStatus(node: NodeView, served: ServedVolume): VolumeStatus['quorum'] {
  const quorum = node.quorumOf(served);
  if (quorum === null) return null;
  const { have, need, ok, counted, reason, promise, learning } = quorum;
  return { onNoQuorum: served.config.onNoQuorum, have, need, ok, counted, reason, promise, learning };
}
