import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** Custom search attributes: the Web UI filters migrations by these. Registered on the dev server by the stack. */
export const DedicatedHostIdKey = defineSearchAttributeKey('DedicatedHostId', SearchAttributeType.KEYWORD);
export const MigrationPhaseKey = defineSearchAttributeKey('MigrationPhase', SearchAttributeType.KEYWORD);
export const SourceServerIdKey = defineSearchAttributeKey('SourceServerId', SearchAttributeType.KEYWORD);
export const TargetServerIdKey = defineSearchAttributeKey('TargetServerId', SearchAttributeType.KEYWORD);

/** Name → type, in the form the dev server's `--search-attribute` flag takes. */
export const CUSTOM_SEARCH_ATTRIBUTES: Record<string, 'Keyword'> = {
  DedicatedHostId: 'Keyword',
  MigrationPhase: 'Keyword',
  SourceServerId: 'Keyword',
  TargetServerId: 'Keyword',
};
