import { localDiskGiB, networkVolumeIds, vmDisks, vmSpecSchema, VM_SPEC_RULES } from '../../common/vm-spec';

/** The disk kinds of the VM spec (issue 17): the schema, its rules and the one normalization every backend reads. */

const base = { vcpus: 1, memoryMiB: 1024, diskGiB: 40 };

function issues(spec: unknown): Array<{ path: string; message: string }> {
  const r = vmSpecSchema.safeParse(spec);
  return r.success ? [] : r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
}

describe('disks in the VM spec', () => {
  it('a spec without disks has one local disk "root" of diskGiB; today\'s specs keep parsing unchanged', () => {
    const spec = vmSpecSchema.parse(base);
    expect(spec).toEqual(base);
    expect(vmDisks(spec)).toEqual([{ name: 'root', kind: 'local', sizeGiB: 40 }]);
    expect(localDiskGiB(spec)).toBe(40);
    expect(networkVolumeIds(spec)).toEqual([]);
  });

  it('local and network disks are kept as given; only local ones count towards what a move copies', () => {
    const spec = vmSpecSchema.parse({
      ...base,
      disks: [
        { name: 'root', kind: 'local', sizeGiB: 10 },
        { name: 'data', kind: 'network', volumeId: 'vol-1' },
        { name: 'scratch', kind: 'local', sizeGiB: 30 },
      ],
    });
    expect(vmDisks(spec).map((d) => d.name)).toEqual(['root', 'data', 'scratch']);
    expect(localDiskGiB(spec)).toBe(40);
    expect(networkVolumeIds(spec)).toEqual(['vol-1']);
    // A network-only VM copies nothing.
    expect(localDiskGiB(vmSpecSchema.parse({ ...base, disks: [{ name: 'data', kind: 'network', volumeId: 'vol-1' }] }))).toBe(0);
  });

  it('vmDisks returns copies: a caller changing the list does not change the spec', () => {
    const spec = vmSpecSchema.parse({ ...base, disks: [{ name: 'root', kind: 'local', sizeGiB: 10 }] });
    const disks = vmDisks(spec);
    (disks[0] as { sizeGiB: number }).sizeGiB = 99;
    expect(spec.disks![0]).toEqual({ name: 'root', kind: 'local', sizeGiB: 10 });
  });

  it('local disks adding up to more than diskGiB are refused naming disks; exactly diskGiB is accepted', () => {
    const over = issues({
      ...base,
      disks: [
        { name: 'a', kind: 'local', sizeGiB: 30 },
        { name: 'b', kind: 'local', sizeGiB: 11 },
      ],
    });
    expect(over).toEqual([{ path: 'disks', message: expect.stringContaining('diskGiB (40)') }]);
    expect(
      issues({
        ...base,
        disks: [
          { name: 'a', kind: 'local', sizeGiB: 30 },
          { name: 'b', kind: 'local', sizeGiB: 10 },
        ],
      }),
    ).toEqual([]);
  });

  it('names unique, at most 8 disks, at least one when given, kinds known, fields of the other kind refused', () => {
    expect(
      issues({
        ...base,
        disks: [
          { name: 'a', kind: 'local', sizeGiB: 1 },
          { name: 'a', kind: 'network', volumeId: 'v' },
        ],
      }),
    ).toEqual([{ path: 'disks.1.name', message: expect.stringContaining('a names two disks') }]);
    const nine = Array.from({ length: 9 }, (_, i) => ({ name: `d${i}`, kind: 'network', volumeId: `v${i}` }));
    expect(issues({ ...base, disks: nine }).map((i) => i.path)).toEqual(['disks']);
    expect(issues({ ...base, disks: nine.slice(0, 8) })).toEqual([]);
    expect(issues({ ...base, disks: [] }).map((i) => i.path)).toEqual(['disks']);
    expect(issues({ ...base, disks: [{ name: 'a', kind: 'tape', sizeGiB: 1 }] }).map((i) => i.path)).toEqual(['disks.0.kind']);
    expect(issues({ ...base, disks: [{ name: 'a', kind: 'local', sizeGiB: 1, volumeId: 'v' }] }).map((i) => i.path)).toEqual(['disks.0']);
    expect(issues({ ...base, disks: [{ name: 'a', kind: 'network' }] }).map((i) => i.path)).toEqual(['disks.0.volumeId']);
    expect(issues({ ...base, disks: [{ name: 'a', kind: 'local', sizeGiB: 0 }] }).map((i) => i.path)).toEqual(['disks.0.sizeGiB']);
    expect(issues({ ...base, disks: [{ name: 'Root', kind: 'local', sizeGiB: 1 }] }).map((i) => i.path)).toEqual(['disks.0.name']);
    expect(issues({ ...base, disks: [{ name: 'a', kind: 'network', volumeId: '../etc' }] }).map((i) => i.path)).toEqual(['disks.0.volumeId']);
  });

  it('the rules are published with the schema (the API document carries them as x-dhm-rules)', () => {
    const json = JSON.stringify(vmSpecSchema.toJSONSchema());
    for (const r of VM_SPEC_RULES) expect(json).toContain(JSON.stringify(r.rule));
    expect(VM_SPEC_RULES.map((r) => r.rule)).toEqual(['lessOrEqual', 'lessOrEqual', 'sumLessOrEqual', 'unique']);
  });

  it('the sim workload may state the data on the disks (at most diskGiB) and a disk write rate', () => {
    expect(issues({ ...base, workload: { dirtyRateMiBps: 1, workingSetMiB: 10, diskUsedGiB: 40, diskWriteMiBps: 5 } })).toEqual([]);
    expect(issues({ ...base, workload: { dirtyRateMiBps: 1, workingSetMiB: 10, diskUsedGiB: 41 } }).map((i) => i.path)).toEqual(['workload.diskUsedGiB']);
    expect(issues({ ...base, workload: { dirtyRateMiBps: 1, workingSetMiB: 10, diskWriteMiBps: -1 } }).map((i) => i.path)).toEqual(['workload.diskWriteMiBps']);
  });
});
