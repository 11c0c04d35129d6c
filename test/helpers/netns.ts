// Machines for a test, made of network namespaces (docs/operations.md, "Automatic failover
// through etcd"): each host is a namespace of this test process's own (named after its
// PID) with one interface, `eth0`, on a bridge in the test's namespace, in a /24 of its
// own; the test's namespace has the subnet's .254 on the bridge, so the test reaches every
// host (their admin APIs, etcd) and they reach each other. `cut` takes a host's link down
// (a pulled cable), `heal` brings it back; `remove` deletes the namespaces and the bridge,
// and must run however the test ends (processes still inside a namespace are the test's
// to kill first, by their PIDs).

import { runOk, run } from './node-process.js';

export class NetnsLab {
  readonly subnet: string;
  private readonly bridge: string;
  private readonly hosts = new Map<string, { netns: string; address: string; link: string }>();
  private made = false;

  constructor(private readonly tag = 'lab') {
    // A /24 per test process among 10.213.0.0/16, so that two test files never share one.
    this.subnet = `10.213.${process.pid % 250}`;
    this.bridge = `bmbr${process.pid % 100_000}`;
  }

  /** The host's namespace name, to run a command in it (`ip netns exec <netns> ...`). */
  netns(host: string): string {
    return this.host(host).netns;
  }

  /** The host's address on the lab's subnet. */
  address(host: string): string {
    return this.host(host).address;
  }

  /** A command line that runs `command` in the host's namespace. */
  inside(host: string, command: string, args: string[]): { command: string; args: string[] } {
    return { command: 'ip', args: ['netns', 'exec', this.netns(host), command, ...args] };
  }

  private host(name: string): { netns: string; address: string; link: string } {
    const host = this.hosts.get(name);
    if (host === undefined) throw new Error(`no host ${name} in the lab`);
    return host;
  }

  /** Makes the bridge (the first time) and a host `name` at `.<octet>` on it. */
  async add(name: string, octet: number): Promise<string> {
    if (!this.made) {
      await ip('link', 'add', this.bridge, 'type', 'bridge');
      this.made = true;
      await ip('addr', 'add', `${this.subnet}.254/24`, 'dev', this.bridge);
      await ip('link', 'set', this.bridge, 'up');
    }
    const netns = `bm${process.pid}${this.tag}${name}`;
    const link = `bv${process.pid % 100_000}${name}`.slice(0, 15);
    const address = `${this.subnet}.${octet}`;
    await ip('netns', 'add', netns);
    this.hosts.set(name, { netns, address, link });
    await ip('link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
    await ip('link', 'set', link, 'master', this.bridge);
    await ip('link', 'set', link, 'up');
    await ip('-n', netns, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
    await ip('-n', netns, 'link', 'set', 'eth0', 'up');
    await ip('-n', netns, 'link', 'set', 'lo', 'up');
    return address;
  }

  /** The host's cable is pulled: nothing reaches it or leaves it. */
  async cut(name: string): Promise<void> {
    await ip('link', 'set', this.host(name).link, 'down');
  }

  async heal(name: string): Promise<void> {
    await ip('link', 'set', this.host(name).link, 'up');
  }

  /** The addresses on the host's eth0 (to see where a floating address is). */
  async addresses(name: string): Promise<string[]> {
    const result = await runOk('ip', ['-n', this.netns(name), '-o', '-4', 'addr', 'show', 'dev', 'eth0'], { timeoutMs: 10_000 });
    return [...result.stdout.matchAll(/inet ([0-9.]+)\//g)].map((match) => match[1] ?? '');
  }

  /** Deletes every namespace and the bridge (their veths go with them); safe to call twice. */
  async remove(): Promise<void> {
    for (const { netns } of this.hosts.values()) await run('ip', ['netns', 'del', netns], { timeoutMs: 10_000 });
    this.hosts.clear();
    if (this.made) await run('ip', ['link', 'del', this.bridge], { timeoutMs: 10_000 });
    this.made = false;
  }
}

async function ip(...args: string[]): Promise<void> {
  await runOk('ip', args, { timeoutMs: 10_000 });
}
