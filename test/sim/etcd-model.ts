// A simulated etcd for the failover simulator's coordination through etcd (failover.ts with
// `coordination: etcd`; the node's side is etcd-node.ts): one linearizable store that
// processes each request at the moment it arrives, the leases it expires on the virtual clock
// `ttl` after the last renewal it processed, and the messages between it and each node.
//
// A message is delayed (random, bounded; now and then slow), lost (the seeded Prng decides),
// or not delivered while the node is cut off from etcd; a request that arrives while etcd is
// down is never processed. The requests a node sent before it crashed are still processed;
// their answers find nobody. When etcd comes back after being down, its leader extends every
// lease by its time to live (as etcd's lessor does when a member becomes leader), so a lease
// outlives an outage: the holder, which can only count from what it sent, stops first.
//
// The keys are those src/server/coordinator.ts keeps for one volume: `primary` (under its
// holder's lease), `epoch`, `synced`, and `candidates/<node>` (each under its node's lease). A
// transaction compares values (null: the key is absent) and, when they all hold, applies
// its puts and deletes at once; a put under a lease etcd no longer has fails the whole
// transaction, as etcd refuses it.

import type { Prng } from '../unit/prng.js';
import type { EventQueue } from './event-queue.js';

export const PRIMARY_KEY = 'primary';
export const EPOCH_KEY = 'epoch';
export const SYNCED_KEY = 'synced';
export const CANDIDATES = 'candidates/';

export interface EtcdPut {
  key: string;
  value: string;
  lease: string | null;
}

export type EtcdRequest =
  | { kind: 'grant'; ttlMs: number }
  | { kind: 'keepalive'; lease: string }
  | { kind: 'range' }
  | { kind: 'put'; put: EtcdPut }
  | { kind: 'txn'; compares: { key: string; value: string | null }[]; puts: EtcdPut[]; deletes: string[] };

export type EtcdAnswer =
  | { kind: 'granted'; lease: string; ttlMs: number }
  /** A keepalive's answer: the lease lives `ttlMs` from when etcd processed it. */
  | { kind: 'renewed'; ttlMs: number }
  | { kind: 'keys'; keys: Record<string, string> }
  | { kind: 'done'; succeeded: boolean }
  /** etcd has no such lease (expired or never granted): a keepalive's answer, or a put's refusal. */
  | { kind: 'lease-not-found' };

export interface EtcdNetwork {
  /** One way, in the simulator's microseconds. */
  delayUs: { minUs: number; maxUs: number };
  /** Chance that a message takes up to four times the longest delay. */
  slowChance: number;
  /** Chance that a message is lost, until `lossUntilUs` (the run's last stretch settles without). */
  lossChance: number;
  lossUntilUs: number;
}

interface StoredKey {
  value: string;
  lease: string | null;
}

interface Lease {
  ttlUs: number;
  expiresAtUs: number;
}

/** What a successful transaction or put wrote, reported as etcd processed it. */
export type EtcdCommitted = (key: string, value: string | null, atUs: number) => void;

export class SimEtcd {
  private readonly keys = new Map<string, StoredKey>();
  private readonly leases = new Map<string, Lease>();
  private nextLease: bigint;
  private down = 0;
  /** Nodes cut off from etcd (a count per node, since cuts may overlap). */
  private readonly cut = new Map<string, number>();
  readonly counts = { requests: 0, processed: 0, lost: 0, leasesGranted: 0, leasesExpired: 0, outages: 0, cuts: 0 };

  constructor(
    private readonly queue: EventQueue,
    private readonly prng: Prng,
    private readonly network: EtcdNetwork,
    private readonly usPerMs: number,
    private readonly committed: EtcdCommitted,
    private readonly note: (text: string) => void,
  ) {
    this.nextLease = 7_587_871_239_459_723_000n + BigInt(prng.below(1000));
  }

  get isUp(): boolean {
    return this.down === 0;
  }

  /** Every member stops for `forUs`. */
  goDown(forUs: number): void {
    this.expire();
    this.down += 1;
    this.counts.outages += 1;
    this.note(`etcd is down for ${forUs}us`);
    this.queue.after(forUs, 'etcd comes back', () => {
      this.down -= 1;
      if (this.down > 0) return;
      // The new leader refreshes every lease: each lives its TTL from now.
      for (const lease of this.leases.values()) lease.expiresAtUs = this.queue.now + lease.ttlUs;
      this.note('etcd is back; every lease lives its TTL from now');
    });
  }

  /** `node` cannot reach etcd for `forUs`. */
  cutOff(node: string, forUs: number): void {
    this.cut.set(node, (this.cut.get(node) ?? 0) + 1);
    this.counts.cuts += 1;
    this.note(`${node} cut off from etcd for ${forUs}us`);
    this.queue.after(forUs, `${node} reaches etcd again`, () => this.cut.set(node, (this.cut.get(node) ?? 1) - 1));
  }

  reaches(node: string): boolean {
    return (this.cut.get(node) ?? 0) === 0;
  }

  /** The value of `key` now (for the end of a run and for traces; nodes only read by request). */
  peek(key: string): string | null {
    this.expire();
    return this.keys.get(key)?.value ?? null;
  }

  /**
   * Sends `request` from `node`; `answer` runs when etcd's answer arrives, unless a message
   * was lost, etcd was down or the node cut off, or `alive` says the node is no longer the
   * incarnation that asked.
   */
  send(node: string, label: string, request: EtcdRequest, alive: () => boolean, answer: (answer: EtcdAnswer) => void): void {
    this.counts.requests += 1;
    if (!this.reaches(node) || this.lost()) {
      this.counts.lost += 1;
      return;
    }
    this.queue.after(this.delayUs(), `${label} ${node}->etcd`, () => {
      if (!this.isUp || !this.reaches(node)) {
        this.counts.lost += 1;
        return;
      }
      const result = this.process(node, request);
      if (!this.reaches(node) || this.lost()) {
        this.counts.lost += 1;
        return;
      }
      this.queue.after(this.delayUs(), `${label} answer etcd->${node}`, () => {
        if (!this.reaches(node) || !alive()) return;
        answer(result);
      });
    });
  }

  private lost(): boolean {
    return this.queue.now < this.network.lossUntilUs && this.prng.chance(this.network.lossChance);
  }

  private delayUs(): number {
    const { minUs, maxUs } = this.network.delayUs;
    if (this.prng.chance(this.network.slowChance)) return this.prng.between(maxUs, 4 * maxUs);
    return this.prng.between(minUs, maxUs);
  }

  /** Leases whose time is up go, and every key under them. */
  private expire(): void {
    if (!this.isUp) return;
    const now = this.queue.now;
    for (const [id, lease] of this.leases) {
      if (lease.expiresAtUs > now) continue;
      this.leases.delete(id);
      this.counts.leasesExpired += 1;
      this.note(`etcd: lease ${id} expired at ${lease.expiresAtUs}us`);
      for (const [key, stored] of this.keys) {
        if (stored.lease !== id) continue;
        this.keys.delete(key);
        this.committed(key, null, lease.expiresAtUs);
      }
    }
  }

  private process(node: string, request: EtcdRequest): EtcdAnswer {
    this.expire();
    this.counts.processed += 1;
    const now = this.queue.now;
    switch (request.kind) {
      case 'grant': {
        const id = String(this.nextLease);
        this.nextLease += 1n;
        // etcd counts a lease's time to live in whole seconds.
        const ttlMs = Math.ceil(request.ttlMs / 1000) * 1000;
        this.leases.set(id, { ttlUs: ttlMs * this.usPerMs, expiresAtUs: now + ttlMs * this.usPerMs });
        this.counts.leasesGranted += 1;
        this.note(`etcd: lease ${id} granted to ${node}`);
        return { kind: 'granted', lease: id, ttlMs };
      }
      case 'keepalive': {
        const lease = this.leases.get(request.lease);
        if (lease === undefined) return { kind: 'lease-not-found' };
        lease.expiresAtUs = now + lease.ttlUs;
        return { kind: 'renewed', ttlMs: lease.ttlUs / this.usPerMs };
      }
      case 'range':
        return { kind: 'keys', keys: Object.fromEntries([...this.keys].map(([key, stored]) => [key, stored.value])) };
      case 'put':
        if (request.put.lease !== null && !this.leases.has(request.put.lease)) return { kind: 'lease-not-found' };
        this.apply(node, [request.put], []);
        return { kind: 'done', succeeded: true };
      case 'txn': {
        const holds = request.compares.every((compare) => (this.keys.get(compare.key)?.value ?? null) === compare.value);
        if (!holds) return { kind: 'done', succeeded: false };
        if (request.puts.some((put) => put.lease !== null && !this.leases.has(put.lease))) return { kind: 'lease-not-found' };
        this.apply(node, request.puts, request.deletes);
        return { kind: 'done', succeeded: true };
      }
    }
  }

  private apply(node: string, puts: readonly EtcdPut[], deletes: readonly string[]): void {
    const now = this.queue.now;
    for (const key of deletes) {
      if (!this.keys.delete(key)) continue;
      this.note(`etcd: ${key} deleted by ${node}`);
      this.committed(key, null, now);
    }
    for (const put of puts) {
      this.keys.set(put.key, { value: put.value, lease: put.lease });
      this.note(`etcd: ${put.key} = ${put.value} by ${node}${put.lease === null ? '' : ` under lease ${put.lease}`}`);
      this.committed(put.key, put.value, now);
    }
  }
}
