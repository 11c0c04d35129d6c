// A network partition between two loopback addresses, made with nftables: a table of
// this test process's own (named after its PID) whose output chain drops every packet,
// TCP and UDP, from one address to the other in both directions. cut() and heal() add and
// flush the rule; remove() deletes the table, and must run however the test ends.
// Only the two addresses given are affected: other loopback traffic passes.

import { runOk } from './node-process.js';

export class NftPartition {
  private readonly table: string;
  private created = false;
  isCut = false;

  constructor(
    private readonly first: string,
    private readonly second: string,
    name = 'partition',
  ) {
    this.table = `blockmirror_test_${process.pid}_${name}`;
  }

  private async nft(...args: string[]): Promise<void> {
    await runOk('nft', args, { timeoutMs: 10_000 });
  }

  private async ensureTable(): Promise<void> {
    if (this.created) return;
    await this.nft('add', 'table', 'inet', this.table);
    this.created = true;
    await this.nft('add', 'chain', 'inet', this.table, 'out', '{ type filter hook output priority 0; policy accept; }');
  }

  /** Drops all traffic between the two addresses. */
  async cut(): Promise<void> {
    await this.ensureTable();
    if (this.isCut) return;
    await this.nft('add', 'rule', 'inet', this.table, 'out', 'ip', 'saddr', this.first, 'ip', 'daddr', this.second, 'drop');
    await this.nft('add', 'rule', 'inet', this.table, 'out', 'ip', 'saddr', this.second, 'ip', 'daddr', this.first, 'drop');
    this.isCut = true;
  }

  /** Lets traffic through again. */
  async heal(): Promise<void> {
    if (!this.created || !this.isCut) return;
    await this.nft('flush', 'chain', 'inet', this.table, 'out');
    this.isCut = false;
  }

  /** Deletes the table (idempotent). */
  async remove(): Promise<void> {
    if (!this.created) return;
    this.created = false;
    this.isCut = false;
    await this.nft('delete', 'table', 'inet', this.table);
  }
}
